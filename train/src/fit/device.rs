//! Choosing the compute device from `--device auto|cpu|cuda[:N]`.

use std::str::FromStr;
use tch::Device;

/// A device request as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA device 0 when available, otherwise CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The given CUDA device.
    Cuda(usize),
}

impl FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceRequest::Cuda)
                .ok_or_else(|| format!("unknown device `{other}` (use auto, cpu, cuda or cuda:N)")),
        }
    }
}

/// Errors resolving a device request.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// CUDA was requested but libtorch sees no GPU.
    #[error(
        "CUDA device {requested} was requested but {available} CUDA device(s) are available; \
         use --device cpu, or build with `--features cuda` on a machine with an NVIDIA GPU"
    )]
    CudaUnavailable {
        /// The requested index.
        requested: usize,
        /// How many devices libtorch sees.
        available: usize,
    },
}

impl DeviceRequest {
    /// Resolves the request against the devices libtorch can see.
    pub fn resolve(self) -> Result<Device, DeviceError> {
        let available = if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
        match self {
            DeviceRequest::Auto if available > 0 => Ok(Device::Cuda(0)),
            DeviceRequest::Auto | DeviceRequest::Cpu => Ok(Device::Cpu),
            DeviceRequest::Cuda(index) if index < available => Ok(Device::Cuda(index)),
            DeviceRequest::Cuda(requested) => Err(DeviceError::CudaUnavailable { requested, available }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_cuda_without_a_gpu_is_a_clear_error() {
        assert_eq!("cuda:1".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cuda(1));
        assert!("gpu".parse::<DeviceRequest>().is_err());
        assert_eq!(DeviceRequest::Cpu.resolve().unwrap(), Device::Cpu);
        if !tch::Cuda::is_available() {
            assert_eq!(DeviceRequest::Auto.resolve().unwrap(), Device::Cpu);
            let error = DeviceRequest::Cuda(0).resolve().unwrap_err().to_string();
            assert!(error.contains("--device cpu"), "{error}");
        }
    }
}
