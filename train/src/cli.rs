//! Command-line argument groups that `dim-train` and `dim-eval` share, each with the one help
//! text and default both binaries show.

use crate::data::DataFormat;
use crate::fit::device::{DeviceError, DeviceRequest};
use clap::Args;

/// `--format`: which reader opens the data.
#[derive(Debug, Clone, Copy, Args)]
pub struct FormatArg {
    /// Data format.
    #[arg(long, value_enum, default_value_t = DataFormat::Auto)]
    pub format: DataFormat,
}

/// `--device`: where libtorch runs.
#[derive(Debug, Clone, Copy, Args)]
pub struct DeviceArg {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
}

impl DeviceArg {
    /// The libtorch device the request names.
    pub fn resolve(self) -> Result<tch::Device, DeviceError> {
        self.device.resolve()
    }
}
