//! The dataset held on the training device: every example decoded once into one tensor there,
//! and each epoch's batches gathered there in the host loader's order with its flip and padded
//! crop, so that a step copies no images from the host. The batches are exactly the loader's
//! (`epoch_batches`), examples that fail to load included: they are left out the same way.

use super::Dataset;
use super::device_upload::upload;
use super::loader::{LoaderOptions, augmentation_seed, batches_per_epoch, draw_placement, epoch_order};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// Examples decoded per upload while loading, which bounds the host memory held at once.
const UPLOAD_CHUNK: usize = 2048;

/// The decoded dataset cannot be held on the device.
#[derive(Debug, thiserror::Error)]
#[error(
    "the decoded dataset ({gib:.2} GiB as 32-bit floats) does not fit on {device}: {reason}; train without --data-on-device"
)]
pub struct DoesNotFit {
    /// Its size.
    pub gib: f64,
    /// The device.
    pub device: String,
    /// libtorch's message.
    pub reason: String,
}

/// Every example of a dataset, decoded, on one device.
pub struct ResidentData {
    /// `[N, C, S, S]`; rows of examples that failed to load are zeros and never gathered.
    images: Tensor,
    /// Examples that failed to load, by dataset index (ascending), with the reason.
    failed: Vec<(usize, String)>,
    /// `0..S` on the device, for the crop and flip index arithmetic.
    positions: Tensor,
    /// `0..C` on the device, shaped `[1, C, 1, 1]`.
    channels: Tensor,
}

impl ResidentData {
    /// Decodes every example of `dataset` (in parallel, a chunk at a time) onto `device`.
    pub fn load(dataset: &dyn Dataset, device: Device) -> Result<Self, DoesNotFit> {
        let spec = dataset.input_spec();
        let (count, channels, size) = (dataset.len(), spec.channels as i64, spec.size as i64);
        let shape = [count as i64, channels, size, size];
        let images = Tensor::f_zeros(shape, (Kind::Float, device)).map_err(|error| DoesNotFit {
            gib: (count * spec.len() * 4) as f64 / f64::from(1u32 << 30),
            device: format!("{device:?}"),
            reason: error.to_string(),
        })?;
        let mut failed = Vec::new();
        for start in (0..count).step_by(UPLOAD_CHUNK) {
            let end = (start + UPLOAD_CHUNK).min(count);
            let samples: Vec<_> = (start..end).into_par_iter().map(|index| dataset.get(index)).collect();
            let mut pixels = Vec::with_capacity((end - start) * spec.len());
            for (index, sample) in (start..end).zip(samples) {
                match sample {
                    Ok(sample) => pixels.extend_from_slice(&sample.pixels),
                    Err(error) => {
                        failed.push((index, error.to_string()));
                        pixels.resize(pixels.len() + spec.len(), 0.0);
                    }
                }
            }
            let chunk = Tensor::from_slice(&pixels).reshape([(end - start) as i64, channels, size, size]);
            images.narrow(0, start as i64, (end - start) as i64).copy_(&chunk);
        }
        Ok(ResidentData {
            images,
            failed,
            positions: Tensor::arange(size, (Kind::Int64, device)),
            channels: Tensor::arange(channels, (Kind::Int64, device)).view([1, channels, 1, 1]),
        })
    }

    /// Epoch `epoch`'s batches as [`super::epoch_batches`] makes them with `options`: the order,
    /// the left-out examples and the augmentation are the same. The epoch's indices and
    /// placements go to the device once, here; each batch is then gathered there.
    ///
    /// # Panics
    /// When `options.batch_size` is 0.
    pub fn epoch(&self, options: &LoaderOptions, epoch: usize) -> ResidentEpoch<'_> {
        let count = self.images.size()[0] as usize;
        let order = epoch_order(count, options, epoch);
        let batch_count = batches_per_epoch(count, options);
        let mut indices = Vec::with_capacity(order.len());
        let mut batches = Vec::with_capacity(batch_count);
        let mut skipped = Vec::new();
        for chunk in order.chunks(options.batch_size).take(batch_count) {
            let start = indices.len();
            for &index in chunk {
                match self.failed.binary_search_by_key(&index, |(failed, _)| *failed) {
                    Ok(position) => skipped.push(self.failed[position].clone()),
                    Err(_) => indices.push(index),
                }
            }
            if indices.len() > start {
                batches.push((start, indices.len() - start));
            }
        }
        let device = self.images.device();
        let placements: Option<Vec<_>> = indices
            .iter()
            .map(|&index| draw_placement(&options.augment, augmentation_seed(options, epoch, index)))
            .collect();
        let crop = placements.map(|placements| {
            let padding = options.augment.crop_padding as i64;
            let size = self.positions.size()[0];
            let flips: Vec<bool> = placements.iter().map(|placement| placement.flip).collect();
            let column_offsets: Vec<i64> =
                placements.iter().map(|placement| placement.shift_x as i64 + padding).collect();
            let row_offsets: Vec<i64> =
                placements.iter().map(|placement| placement.shift_y as i64 + padding).collect();
            let flips = upload(&flips, device).unsqueeze(1);
            let mirrored = (self.positions.neg() + (size - 1)).unsqueeze(0);
            let columns = mirrored.where_self(&flips, &self.positions.unsqueeze(0))
                + upload(&column_offsets, device).unsqueeze(1);
            let rows = self.positions.unsqueeze(0) + upload(&row_offsets, device).unsqueeze(1);
            Crop { padding, rows, columns }
        });
        ResidentEpoch {
            data: self,
            indices: upload(&indices.iter().map(|&i| i as i64).collect::<Vec<_>>(), device),
            crop,
            batches,
            next: 0,
            skipped,
        }
    }
}

/// Where each position of an epoch reads its pixels from in the zero-padded image.
struct Crop {
    padding: i64,
    /// `[positions, S]`: the padded row each output row reads.
    rows: Tensor,
    /// `[positions, S]`: the padded column each output column reads (mirrored when flipped).
    columns: Tensor,
}

/// One epoch's batches, gathered on the device as they are asked for.
pub struct ResidentEpoch<'a> {
    data: &'a ResidentData,
    /// Every batch's dataset indices, back to back, on the device.
    indices: Tensor,
    crop: Option<Crop>,
    /// `(start, len)` of each batch in `indices`.
    batches: Vec<(usize, usize)>,
    next: usize,
    skipped: Vec<(usize, String)>,
}

impl ResidentEpoch<'_> {
    /// The epoch's left-out examples, as (dataset index, reason), in the order the loader meets
    /// them.
    pub fn skipped(&self) -> Vec<(usize, String)> {
        self.skipped.clone()
    }
}

impl Iterator for ResidentEpoch<'_> {
    /// `[len, C, S, S]` images on the device.
    type Item = Tensor;

    fn next(&mut self) -> Option<Tensor> {
        let &(start, len) = self.batches.get(self.next)?;
        self.next += 1;
        let (start, len) = (start as i64, len as i64);
        let images = self.data.images.index_select(0, &self.indices.narrow(0, start, len));
        let Some(Crop { padding, rows, columns }) = &self.crop else {
            return Some(images);
        };
        let padded = images.constant_pad_nd([*padding, *padding, *padding, *padding]);
        let size = self.data.positions.size()[0];
        let examples = Tensor::arange(len, (Kind::Int64, images.device())).view([len, 1, 1, 1]);
        let rows = rows.narrow(0, start, len).view([len, 1, size, 1]);
        let columns = columns.narrow(0, start, len).view([len, 1, 1, size]);
        Some(padded.index(&[
            Some(examples),
            Some(self.data.channels.shallow_clone()),
            Some(rows),
            Some(columns),
        ]))
    }

    fn nth(&mut self, n: usize) -> Option<Tensor> {
        // Resuming mid-epoch skips batches without gathering them.
        self.next = self.next.saturating_add(n).min(self.batches.len());
        self.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.batches.len() - self.next;
        (left, Some(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Augment, DataError, Sample, epoch_batches};
    use dim_models::preprocess::{Background, InputSpec, ResizePolicy};
    use std::sync::Arc;

    /// Example i is a 3×5×5 image whose pixels all differ (i·75 + p), labelled i % 2; listed
    /// indices fail to load.
    struct Numbered {
        len: usize,
        failing: Vec<usize>,
    }

    impl Dataset for Numbered {
        fn len(&self) -> usize {
            self.len
        }
        fn input_spec(&self) -> InputSpec {
            InputSpec { channels: 3, size: 5, resize: ResizePolicy::Pad, background: Background::White }
        }
        fn num_classes(&self) -> Option<usize> {
            Some(2)
        }
        fn get(&self, index: usize) -> Result<Sample, DataError> {
            if self.failing.contains(&index) {
                return Err(DataError::Format { path: format!("{index}").into(), reason: "broken".into() });
            }
            let pixels = (0..75).map(|p| (index * 75 + p) as f32 + 1.0).collect();
            Ok(Sample { pixels, label: Some(index as u32 % 2) })
        }
        fn fingerprint(&self) -> String {
            "numbered".into()
        }
        fn describe(&self) -> String {
            "numbered".into()
        }
    }

    fn assert_same_batches(dataset: Numbered, options: LoaderOptions) {
        let dataset: Arc<dyn Dataset> = Arc::new(dataset);
        let resident = ResidentData::load(&*dataset, Device::Cpu).unwrap();
        for epoch in 0..3 {
            let mut host = epoch_batches(Arc::clone(&dataset), &options, epoch);
            let mut device = resident.epoch(&options, epoch);
            let host_batches: Vec<Vec<f32>> = host.by_ref().map(|batch| batch.images).collect();
            let device_batches: Vec<Vec<f32>> =
                device.by_ref().map(|images| Vec::<f32>::try_from(images.flatten(0, -1)).unwrap()).collect();
            assert_eq!(device_batches, host_batches, "epoch {epoch}, {options:?}");
            assert_eq!(device.skipped(), host.skipped(), "epoch {epoch}");
        }
    }

    #[test]
    fn batches_equal_the_host_loaders_with_flip_crop_and_unreadable_examples() {
        for (augment, drop_last) in [
            (Augment { flip: true, crop_padding: 2 }, true),
            (Augment { flip: true, crop_padding: 0 }, false),
            (Augment { flip: false, crop_padding: 4 }, false),
            (Augment::default(), true),
        ] {
            let options =
                LoaderOptions { batch_size: 4, seed: 9, drop_last, augment, ..LoaderOptions::default() };
            assert_same_batches(Numbered { len: 11, failing: vec![2, 7] }, options);
        }
    }

    #[test]
    fn a_batch_of_only_unreadable_examples_is_left_out_as_the_loader_does() {
        let options = LoaderOptions { batch_size: 2, shuffle: false, ..LoaderOptions::default() };
        assert_same_batches(Numbered { len: 6, failing: vec![2, 3] }, options);
        let resident = ResidentData::load(&Numbered { len: 6, failing: vec![2, 3] }, Device::Cpu).unwrap();
        assert_eq!(resident.epoch(&options, 0).count(), 2);
    }

    #[test]
    fn resuming_skips_batches_without_changing_the_rest() {
        let options = LoaderOptions {
            batch_size: 3,
            augment: Augment { flip: true, crop_padding: 1 },
            ..LoaderOptions::default()
        };
        let resident = ResidentData::load(&Numbered { len: 12, failing: vec![] }, Device::Cpu).unwrap();
        let all: Vec<Tensor> = resident.epoch(&options, 1).collect();
        let resumed: Vec<Tensor> = resident.epoch(&options, 1).skip(2).collect();
        assert_eq!(resumed.len(), 2);
        for (a, b) in resumed.iter().zip(&all[2..]) {
            assert!(a.equal(b));
        }
    }
}
