//! Copies host values onto the training device without making the host wait for the device.
//!
//! On a GPU, libtorch's plain copy from ordinary (pageable) host memory waits for every kernel
//! already queued before it returns, so one such copy in a training step (a batch, the draws of
//! a view) would stop the host from preparing the next step while the device runs this one.

use tch::{Device, Tensor, kind::Element};

/// `values` as a 1-d tensor on `device`. On CUDA the values are staged in page-locked memory and
/// the copy is queued on the current stream without waiting; libtorch's page-locked allocator
/// keeps the staging buffer until the copy has run, and later kernels on the stream see the
/// values. Elsewhere it is an ordinary copy (none on the CPU).
pub fn upload<T: Element>(values: &[T], device: Device) -> Tensor {
    let host = Tensor::from_slice(values);
    match device {
        // `_pin_memory`: `pin_memory` with a device argument warns on every call that the
        // argument is deprecated.
        Device::Cuda(_) => host.internal_pin_memory(device).to_device_(device, host.kind(), true, false),
        device => host.to_device(device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn an_upload_to_the_cpu_holds_the_values_exactly() {
        let values = [0.5f32, -1.25, f32::MAX, 3e-39];
        let uploaded = upload(&values, Device::Cpu);
        assert_eq!((uploaded.size(), uploaded.kind()), (vec![4], Kind::Float));
        assert_eq!(Vec::<f32>::try_from(&uploaded).unwrap(), values);
        let flags = upload(&[true, false], Device::Cpu);
        assert_eq!(Vec::<bool>::try_from(&flags).unwrap(), [true, false]);
    }

    #[test]
    fn without_a_gpu_an_upload_to_cuda_fails_rather_than_staying_on_the_host() {
        if tch::Cuda::is_available() {
            let uploaded = upload(&[1i64, 2, 3], Device::Cuda(0));
            assert_eq!(uploaded.device(), Device::Cuda(0));
            assert_eq!(Vec::<i64>::try_from(&uploaded.to_device(Device::Cpu)).unwrap(), [1, 2, 3]);
        } else {
            let attempt = std::panic::catch_unwind(|| upload(&[1i64, 2, 3], Device::Cuda(0)));
            assert!(attempt.is_err());
        }
    }
}
