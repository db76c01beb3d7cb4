//! Occlusion of the global view (the DIM paper's "occlusion" lever): the global vector is computed
//! from an image with a random square blanked out, while the local features still come from the
//! whole image, so Y must predict local features it could not see.

use tch::{Kind, Tensor};

/// The value an occluded pixel takes, in the [0, 1] input scale: 0.5 is zero after the encoder's
/// scaling to [−1, 1], so the patch carries no signal either way and stays distinct from the
/// black or white backgrounds many datasets have.
pub const OCCLUDED_VALUE: f64 = 0.5;

/// Blanks one random `side × side` square per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occlusion {
    side: i64,
}

impl Occlusion {
    /// An occlusion of `side`-pixel squares, or `None` for `side = 0` (no occlusion). `side` must
    /// be smaller than the images it is applied to (`TrainSettings::validate` checks this).
    pub fn new(side: usize) -> Option<Self> {
        (side > 0).then_some(Occlusion { side: side as i64 })
    }

    /// Images `[N, C, H, W]` with one square per image, at a uniformly random position fully
    /// inside it, set to [`OCCLUDED_VALUE`] (the same square in every channel). Draws from
    /// libtorch's generator, so a seeded step occludes the same squares again.
    pub fn occlude(&self, images: &Tensor) -> Tensor {
        let [n, _, height, width] = images.size()[..] else { panic!("images must be [N, C, H, W]") };
        let device = images.device();
        let tops = Tensor::randint_low(0, height - self.side + 1, [n], (Kind::Int64, device));
        let lefts = Tensor::randint_low(0, width - self.side + 1, [n], (Kind::Int64, device));
        self.occlude_at(images, &tops, &lefts)
    }

    /// Images `[N, C, H, W]` with the square whose top-left corner is `(tops[i], lefts[i])` set to
    /// [`OCCLUDED_VALUE`] in image `i`.
    pub fn occlude_at(&self, images: &Tensor, tops: &Tensor, lefts: &Tensor) -> Tensor {
        let [_, _, height, width] = images.size()[..] else { panic!("images must be [N, C, H, W]") };
        images.masked_fill(&self.mask(tops, lefts, height, width), OCCLUDED_VALUE)
    }

    /// `[N, 1, H, W]` boolean mask, true inside each image's square.
    pub fn mask(&self, tops: &Tensor, lefts: &Tensor, height: i64, width: i64) -> Tensor {
        let inside = |starts: &Tensor, extent: i64| {
            let positions = Tensor::arange(extent, (Kind::Int64, starts.device())).unsqueeze(0); // [1, extent]
            let starts = starts.unsqueeze(1); // [N, 1]
            positions.ge_tensor(&starts).logical_and(&positions.lt_tensor(&(starts + self.side)))
        };
        let rows = inside(tops, height).unsqueeze(2); // [N, H, 1]
        let columns = inside(lefts, width).unsqueeze(1); // [N, 1, W]
        rows.logical_and(&columns).unsqueeze(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn corners(values: &[i64]) -> Tensor {
        Tensor::from_slice(values)
    }

    #[test]
    fn no_occlusion_for_side_zero() {
        assert_eq!(Occlusion::new(0), None);
    }

    #[test]
    fn the_mask_covers_exactly_the_square_at_each_corner() {
        let occlusion = Occlusion::new(2).unwrap();
        let mask = occlusion.mask(&corners(&[0, 3]), &corners(&[1, 2]), 5, 4);
        assert_eq!(mask.size(), [2, 1, 5, 4]);
        for (image, top, left) in [(0, 0, 1), (1, 3, 2)] {
            for row in 0..5 {
                for column in 0..4 {
                    let inside = (top..top + 2).contains(&row) && (left..left + 2).contains(&column);
                    let masked = mask.int64_value(&[image, 0, row, column]) == 1;
                    assert_eq!(masked, inside, "image {image} at ({row}, {column})");
                }
            }
        }
    }

    #[test]
    fn occluding_a_hand_built_batch_changes_only_the_square_in_every_channel() {
        let occlusion = Occlusion::new(3).unwrap();
        let images = Tensor::arange(2 * 2 * 6 * 6, (Kind::Float, Device::Cpu)).reshape([2, 2, 6, 6]) / 200.0;
        let occluded = occlusion.occlude_at(&images, &corners(&[1, 3]), &corners(&[2, 0]));
        assert_eq!(occluded.size(), images.size());
        let changed = occluded.ne_tensor(&images);
        // 2 images × 2 channels × 9 pixels, none of which held 0.5 before.
        assert_eq!(changed.sum(Kind::Int64).int64_value(&[]), 2 * 2 * 9);
        for (image, top, left) in [(0, 1, 2), (1, 3, 0)] {
            let square = occluded.get(image).narrow(1, top, 3).narrow(2, left, 3);
            assert!(square.eq(OCCLUDED_VALUE).all().int64_value(&[]) == 1, "image {image}");
        }
    }

    #[test]
    fn random_squares_lie_inside_the_image_with_their_full_area() {
        let _turn = crate::torch_generator::exclusive();
        let occlusion = Occlusion::new(5).unwrap();
        let images = Tensor::zeros([16, 3, 8, 8], (Kind::Float, Device::Cpu));
        let occluded = occlusion.occlude(&images);
        let per_image =
            occluded.eq(OCCLUDED_VALUE).sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Int64);
        assert_eq!(Vec::<i64>::try_from(per_image).unwrap(), vec![3 * 25; 16]);
    }
}
