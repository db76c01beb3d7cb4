//! The batch loader: a seeded per-epoch order, reproducible augmentation, decoding in parallel on
//! a background thread and a bounded queue of ready batches, so the trainer rarely waits on data.

use super::Dataset;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// Random augmentation applied to training images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augment {
    /// Mirror left–right with probability 0.5.
    pub flip: bool,
    /// Pad each side with this many black pixels, then crop back to the input size at a random
    /// offset (0 = no crop).
    pub crop_padding: usize,
}

/// How [`epoch_batches`] orders, groups and augments examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Examples per batch; must be at least 1.
    pub batch_size: usize,
    /// Visit examples in a seeded random order rather than index order.
    pub shuffle: bool,
    /// Seed for the order and the augmentation.
    pub seed: u64,
    /// Leave out the last batch when it would be smaller than `batch_size`.
    pub drop_last: bool,
    /// Augmentation applied to every example.
    pub augment: Augment,
    /// Batches decoded ahead of the consumer.
    pub prefetch_batches: usize,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            batch_size: 64,
            shuffle: true,
            seed: 0,
            drop_last: false,
            augment: Augment::default(),
            prefetch_batches: 4,
        }
    }
}

/// A batch of preprocessed (and possibly augmented) examples.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `len` images one after another, each CHW in [0, 1].
    pub images: Vec<f32>,
    /// One class per image, when the dataset is labelled.
    pub labels: Option<Vec<i64>>,
    /// Number of images; below the batch size for the last batch or when examples were skipped.
    pub len: usize,
}

/// Number of batches an epoch over `len` examples yields (before any skipped examples empty one).
///
/// # Panics
/// When `options.batch_size` is 0.
pub fn batches_per_epoch(len: usize, options: &LoaderOptions) -> usize {
    assert!(options.batch_size > 0, "batch size must be at least 1");
    if options.drop_last { len / options.batch_size } else { len.div_ceil(options.batch_size) }
}

/// The batches of one epoch, decoded ahead on a background thread.
///
/// Examples that fail to load are left out of their batch and recorded (see [`Self::skipped`]);
/// a batch whose examples all fail is not yielded. Dropping this early stops the producer.
pub struct EpochBatches {
    receiver: Option<Receiver<Batch>>,
    producer: Option<JoinHandle<()>>,
    skipped: Arc<Mutex<Vec<(usize, String)>>>,
}

/// Starts producing epoch `epoch`'s batches.
///
/// Deterministic for (`options.seed`, `epoch`): the same order and the same augmentation, whatever
/// the thread count. Each batch is decoded in parallel with rayon on a background thread that keeps
/// up to `options.prefetch_batches` batches ready.
///
/// # Panics
/// When `options.batch_size` is 0.
pub fn epoch_batches(dataset: Arc<dyn Dataset>, options: &LoaderOptions, epoch: usize) -> EpochBatches {
    let order = epoch_order(dataset.len(), options, epoch);
    let batch_count = batches_per_epoch(dataset.len(), options);
    let (sender, receiver) = sync_channel(options.prefetch_batches);
    let skipped = Arc::new(Mutex::new(Vec::new()));
    let producer = {
        let options = *options;
        let skipped = Arc::clone(&skipped);
        std::thread::Builder::new()
            .name(format!("dim-data-epoch-{epoch}"))
            .spawn(move || {
                produce(&*dataset, &options, epoch, &order, batch_count, &sender, &skipped);
            })
            .expect("the OS can start the data loader thread")
    };
    EpochBatches { receiver: Some(receiver), producer: Some(producer), skipped }
}

impl EpochBatches {
    /// Examples left out so far, as (dataset index, reason), in the order they were met.
    pub fn skipped(&self) -> Vec<(usize, String)> {
        self.skipped.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Iterator for EpochBatches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let batch = self.receiver.as_ref()?.recv().ok();
        if batch.is_none() {
            self.receiver = None;
            // The producer has finished or died; a panic there is a bug that must not pass as a
            // short epoch.
            if let Some(producer) = self.producer.take()
                && let Err(panic) = producer.join()
            {
                std::panic::resume_unwind(panic);
            }
        }
        batch
    }
}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        // Closing the channel first makes the producer's next send fail, so it stops after the
        // batch in hand instead of blocking on a full queue forever.
        self.receiver = None;
        if let Some(producer) = self.producer.take() {
            // A producer panic while dropping is not re-raised: panicking in drop would abort.
            let _ = producer.join();
        }
    }
}

/// Dataset indices in the order epoch `epoch` visits them.
pub(super) fn epoch_order(len: usize, options: &LoaderOptions, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if options.shuffle {
        let mut rng = StdRng::seed_from_u64(mix(options.seed, epoch as u64));
        order.shuffle(&mut rng);
    }
    order
}

fn produce(
    dataset: &dyn Dataset,
    options: &LoaderOptions,
    epoch: usize,
    order: &[usize],
    batch_count: usize,
    sender: &SyncSender<Batch>,
    skipped: &Mutex<Vec<(usize, String)>>,
) {
    let spec = dataset.input_spec();
    for indices in order.chunks(options.batch_size).take(batch_count) {
        let loaded: Vec<_> = indices
            .par_iter()
            .map(|&index| {
                dataset.get(index).map(|mut sample| {
                    let seed = augmentation_seed(options, epoch, index);
                    augment_in_place(&mut sample.pixels, spec.channels, spec.size, &options.augment, seed);
                    sample
                })
            })
            .collect();
        let mut images = Vec::with_capacity(indices.len() * spec.len());
        let mut labels = Vec::with_capacity(indices.len());
        let mut all_labelled = true;
        let mut len = 0;
        for (&index, result) in indices.iter().zip(loaded) {
            match result {
                Ok(sample) => {
                    images.extend_from_slice(&sample.pixels);
                    match sample.label {
                        Some(label) => labels.push(i64::from(label)),
                        None => all_labelled = false,
                    }
                    len += 1;
                }
                Err(error) => {
                    skipped.lock().unwrap_or_else(PoisonError::into_inner).push((index, error.to_string()))
                }
            }
        }
        if len == 0 {
            continue;
        }
        let batch = Batch { images, labels: all_labelled.then_some(labels), len };
        if sender.send(batch).is_err() {
            // The consumer dropped its `EpochBatches`; nobody wants the rest.
            return;
        }
    }
}

/// Combines two values into a well-spread seed (the SplitMix64 finaliser over their sum), so
/// nearby seeds, epochs and indices give unrelated random streams.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a.wrapping_add(b.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where one example's augmentation puts it: mirrored or not, and the crop window's offset
/// inside the padded image (0 = centred, no shift).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Placement {
    pub(super) flip: bool,
    pub(super) shift_x: isize,
    pub(super) shift_y: isize,
}

/// The placement `augment` draws for the example whose augmentation seed is `seed` (`None`
/// when it leaves images alone). The host loader and the device-resident data draw through
/// this one function, so both make the same batches.
pub(super) fn draw_placement(augment: &Augment, seed: u64) -> Option<Placement> {
    if !augment.flip && augment.crop_padding == 0 {
        return None;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let flip = augment.flip && rng.random_bool(0.5);
    let padding = augment.crop_padding;
    let (shift_x, shift_y) = if padding > 0 {
        // i64 because rand's uniform sampling is not defined for the platform-sized isize.
        let range = -(padding as i64)..=padding as i64;
        (rng.random_range(range.clone()) as isize, rng.random_range(range) as isize)
    } else {
        (0, 0)
    };
    Some(Placement { flip, shift_x, shift_y })
}

/// The augmentation seed of dataset example `index` in `epoch`.
pub(super) fn augmentation_seed(options: &LoaderOptions, epoch: usize, index: usize) -> u64 {
    mix(mix(options.seed, epoch as u64), index as u64)
}

/// Applies a random horizontal flip and a random padded crop to one CHW image.
fn augment_in_place(pixels: &mut [f32], channels: usize, size: usize, augment: &Augment, seed: u64) {
    let Some(Placement { flip, shift_x, shift_y }) = draw_placement(augment, seed) else {
        return;
    };
    let source = pixels.to_vec();
    let plane = size * size;
    for channel in 0..channels {
        for y in 0..size {
            for x in 0..size {
                let flipped_x = if flip { size - 1 - x } else { x };
                let source_x = flipped_x as isize + shift_x;
                let source_y = y as isize + shift_y;
                let inside = (0..size as isize).contains(&source_x) && (0..size as isize).contains(&source_y);
                pixels[channel * plane + y * size + x] = if inside {
                    source[channel * plane + source_y as usize * size + source_x as usize]
                } else {
                    0.0
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataError, Sample};
    use dim_models::preprocess::{Background, InputSpec, ResizePolicy};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Example i is a 1×4×4 image with pixel p = (i * 16 + p) / 1000, labelled i % 3; listed
    /// indices fail to load. Counts the examples it was asked for.
    struct Numbered {
        len: usize,
        bad: Vec<usize>,
        reads: AtomicUsize,
    }

    impl Dataset for Numbered {
        fn len(&self) -> usize {
            self.len
        }
        fn input_spec(&self) -> InputSpec {
            InputSpec { channels: 1, size: 4, resize: ResizePolicy::Stretch, background: Background::White }
        }
        fn num_classes(&self) -> Option<usize> {
            Some(3)
        }
        fn get(&self, index: usize) -> Result<Sample, DataError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            if self.bad.contains(&index) {
                return Err(DataError::Format {
                    path: format!("example-{index}").into(),
                    reason: "bad".into(),
                });
            }
            let pixels = (0..16).map(|p| (index * 16 + p) as f32 / 1000.0).collect();
            Ok(Sample { pixels, label: Some((index % 3) as u32) })
        }
        fn fingerprint(&self) -> String {
            "numbered".into()
        }
        fn describe(&self) -> String {
            "numbered".into()
        }
    }

    fn numbered(len: usize) -> Arc<dyn Dataset> {
        Arc::new(Numbered { len, bad: Vec::new(), reads: AtomicUsize::new(0) })
    }

    /// Recovers the example index from a batch image's first pixel when it was not augmented.
    fn indices_of(batch: &Batch) -> Vec<usize> {
        batch.images.chunks(16).map(|image| (image[0] * 1000.0 / 16.0).round() as usize).collect()
    }

    #[test]
    fn every_index_appears_once_per_epoch_without_drop_last() {
        let options = LoaderOptions { batch_size: 7, prefetch_batches: 2, ..LoaderOptions::default() };
        let batches: Vec<Batch> = epoch_batches(numbered(50), &options, 0).collect();
        assert_eq!(batches.len(), batches_per_epoch(50, &options));
        assert_eq!(batches.len(), 8);
        assert_eq!(batches.last().unwrap().len, 1);
        let mut seen: Vec<usize> = batches.iter().flat_map(indices_of).collect();
        let labels: Vec<i64> = batches.iter().flat_map(|b| b.labels.clone().unwrap()).collect();
        assert!(seen.iter().zip(&labels).all(|(&index, &label)| label == (index % 3) as i64));
        assert_ne!(seen, (0..50).collect::<Vec<_>>(), "shuffled");
        seen.sort();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn drop_last_leaves_out_the_short_batch() {
        let options =
            LoaderOptions { batch_size: 7, drop_last: true, shuffle: false, ..LoaderOptions::default() };
        let batches: Vec<Batch> = epoch_batches(numbered(50), &options, 0).collect();
        assert_eq!(batches.len(), 7);
        assert!(batches.iter().all(|batch| batch.len == 7 && batch.images.len() == 7 * 16));
        assert_eq!(indices_of(&batches[0]), (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn same_seed_and_epoch_repeat_exactly_including_augmentation() {
        let options = LoaderOptions {
            batch_size: 8,
            seed: 42,
            augment: Augment { flip: true, crop_padding: 1 },
            ..LoaderOptions::default()
        };
        let dataset = numbered(40);
        let first: Vec<Batch> = epoch_batches(Arc::clone(&dataset), &options, 3).collect();
        let again: Vec<Batch> = epoch_batches(Arc::clone(&dataset), &options, 3).collect();
        assert_eq!(first, again);
        let plain = LoaderOptions { augment: Augment::default(), ..options };
        let unaugmented: Vec<Batch> = epoch_batches(Arc::clone(&dataset), &plain, 3).collect();
        assert_ne!(first, unaugmented, "augmentation changes pixels");
        assert_eq!(first[0].labels, unaugmented[0].labels, "augmentation keeps the order");

        let next_epoch: Vec<Batch> = epoch_batches(Arc::clone(&dataset), &plain, 4).collect();
        assert_ne!(indices_of(&unaugmented[0]), indices_of(&next_epoch[0]));
        let other_seed = LoaderOptions { seed: 43, ..plain };
        let reseeded: Vec<Batch> = epoch_batches(dataset, &other_seed, 3).collect();
        assert_ne!(indices_of(&unaugmented[0]), indices_of(&reseeded[0]));
    }

    #[test]
    fn flip_and_crop_move_pixels_as_specified() {
        let original: Vec<f32> = (0..16).map(|p| p as f32).collect();
        let flip_only = Augment { flip: true, crop_padding: 0 };
        let mut flipped_once = false;
        for seed in 0..32 {
            let mut pixels = original.clone();
            augment_in_place(&mut pixels, 1, 4, &flip_only, seed);
            if pixels != original {
                assert_eq!(pixels[..4], [3.0, 2.0, 1.0, 0.0]);
                flipped_once = true;
            }
        }
        assert!(flipped_once);

        // Values 1..=16 so that black padding (0) cannot be mistaken for a pixel.
        let original: Vec<f32> = (1..=16).map(|p| p as f32).collect();
        let shifted = |dx: isize, dy: isize| -> Vec<f32> {
            let mut out = vec![0.0; 16];
            for y in 0..4isize {
                for x in 0..4isize {
                    let (sx, sy) = (x + dx, y + dy);
                    if (0..4).contains(&sx) && (0..4).contains(&sy) {
                        out[(y * 4 + x) as usize] = original[(sy * 4 + sx) as usize];
                    }
                }
            }
            out
        };
        let crop_only = Augment { flip: false, crop_padding: 2 };
        let mut shifts_seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let mut pixels = original.clone();
            augment_in_place(&mut pixels, 1, 4, &crop_only, seed);
            let shift = (-2..=2)
                .flat_map(|dx| (-2..=2).map(move |dy| (dx, dy)))
                .find(|&(dx, dy)| shifted(dx, dy) == pixels)
                .expect("a padded crop is a shift by at most the padding");
            shifts_seen.insert(shift);
        }
        assert!(shifts_seen.len() > 10, "crop offsets vary: {shifts_seen:?}");
    }

    #[test]
    fn bad_examples_are_skipped_and_reported() {
        let dataset: Arc<dyn Dataset> =
            Arc::new(Numbered { len: 10, bad: vec![3, 4, 5, 8], reads: AtomicUsize::new(0) });
        let options = LoaderOptions { batch_size: 3, shuffle: false, ..LoaderOptions::default() };
        let mut batches = epoch_batches(dataset, &options, 0);
        let collected: Vec<Batch> = batches.by_ref().collect();
        // Batch [3, 4, 5] is entirely bad and is not yielded.
        let lens: Vec<usize> = collected.iter().map(|batch| batch.len).collect();
        assert_eq!(lens, [3, 2, 1]);
        assert_eq!(collected.iter().flat_map(indices_of).collect::<Vec<_>>(), [0, 1, 2, 6, 7, 9]);
        let skipped: Vec<usize> = batches.skipped().iter().map(|(index, _)| *index).collect();
        assert_eq!(skipped, [3, 4, 5, 8]);
        assert!(batches.skipped()[0].1.contains("example-3"));
    }

    #[test]
    fn dropping_early_stops_the_producer_without_hanging() {
        let dataset = Arc::new(Numbered { len: 100_000, bad: Vec::new(), reads: AtomicUsize::new(0) });
        let options = LoaderOptions { batch_size: 4, prefetch_batches: 1, ..LoaderOptions::default() };
        let mut batches = epoch_batches(Arc::clone(&dataset) as Arc<dyn Dataset>, &options, 0);
        assert!(batches.next().is_some());
        // Dropping joins the producer, so the read count is final afterwards.
        drop(batches);
        // At most: the batch taken, one queued, one being sent when the queue closed.
        let reads = dataset.reads.load(Ordering::Relaxed);
        assert!(reads <= 3 * 4, "{reads} examples read after an early drop");
    }
}
