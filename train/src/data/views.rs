//! Augmented views for cross-view training: random resized crops, horizontal flips and
//! photometric jitter. The random draws are made per image on the host from a seeded generator
//! (so a run is identical on any device and after a resume); the views themselves are made for
//! the whole batch on the training device by one affine grid, one sampling call and a few
//! element-wise ops.

use crate::data::device_upload::upload;
use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Which images the MI terms see during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ViewMode {
    /// The images as loaded (the DIM paper).
    #[default]
    Off,
    /// One augmented view of each image feeds both sides of the MI terms.
    Same,
    /// Two independently augmented views: the global vector of each view is scored against the
    /// local features of the other (the DIM authors' follow-up, AMDIM).
    Cross,
}

impl ViewMode {
    /// The mode's name on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            ViewMode::Off => "off",
            ViewMode::Same => "same",
            ViewMode::Cross => "cross",
        }
    }
}

/// The ranges the views are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ViewAugmentation {
    /// Smallest crop area, as a share of the image.
    pub min_area: f64,
    /// Largest crop area, as a share of the image.
    pub max_area: f64,
    /// Smallest crop aspect ratio (width / height).
    pub min_aspect: f64,
    /// Largest crop aspect ratio (width / height).
    pub max_aspect: f64,
    /// Probability of a horizontal flip.
    pub flip_probability: f64,
    /// Brightness factors are drawn from [1 − b, 1 + b].
    pub brightness: f64,
    /// Contrast factors are drawn from [1 − c, 1 + c].
    pub contrast: f64,
    /// Saturation factors are drawn from [1 − s, 1 + s] (RGB only).
    pub saturation: f64,
    /// Probability of turning a view grey (RGB only).
    pub grey_probability: f64,
}

impl Default for ViewAugmentation {
    /// Area 0.3–1, aspect 3/4–4/3, flips half the time, brightness ±0.2, contrast ×0.7–1.3,
    /// saturation ×0.6–1.4 and greyscale one time in five.
    fn default() -> Self {
        ViewAugmentation {
            min_area: 0.3,
            max_area: 1.0,
            min_aspect: 3.0 / 4.0,
            max_aspect: 4.0 / 3.0,
            flip_probability: 0.5,
            brightness: 0.2,
            contrast: 0.3,
            saturation: 0.4,
            grey_probability: 0.2,
        }
    }
}

/// Where a crop lies, in shares of the image side: its centre and its size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    /// Horizontal centre in (0, 1).
    pub centre_x: f64,
    /// Vertical centre in (0, 1).
    pub centre_y: f64,
    /// Width in (0, 1].
    pub width: f64,
    /// Height in (0, 1].
    pub height: f64,
}

/// One view's random draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewDraw {
    /// The crop, resized back to the full input.
    pub crop: CropBox,
    /// Mirrored left to right.
    pub flip: bool,
    /// Multiplies every value.
    pub brightness: f64,
    /// Scales the distance from the image's mean grey level.
    pub contrast: f64,
    /// Scales the distance from each pixel's grey level (RGB).
    pub saturation: f64,
    /// Replaces the colours by their grey level (RGB).
    pub grey: bool,
}

/// Attempts at a crop inside the image before falling back to the whole image.
const CROP_ATTEMPTS: usize = 10;

/// Rec. 601 luma weights, the grey level of the colour jitter and of random greyscale.
const LUMA: [f64; 3] = [0.299, 0.587, 0.114];

impl ViewAugmentation {
    /// Checks that every range is usable; the message names the flag's quantity.
    pub fn validate(&self) -> Result<(), String> {
        let in_unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !(self.min_area > 0.0 && self.min_area <= self.max_area && self.max_area <= 1.0) {
            return Err(format!(
                "the crop area range must satisfy 0 < min ≤ max ≤ 1, got {}–{}",
                self.min_area, self.max_area
            ));
        }
        if !(self.min_aspect > 0.0 && self.min_aspect <= self.max_aspect && self.max_aspect.is_finite()) {
            return Err(format!(
                "the crop aspect range must satisfy 0 < min ≤ max, got {}–{}",
                self.min_aspect, self.max_aspect
            ));
        }
        for (name, value) in
            [("flip probability", self.flip_probability), ("grey probability", self.grey_probability)]
        {
            if !in_unit(value) {
                return Err(format!("the {name} must be in [0, 1], got {value}"));
            }
        }
        for (name, value) in
            [("brightness", self.brightness), ("contrast", self.contrast), ("saturation", self.saturation)]
        {
            if !(value.is_finite() && (0.0..1.0).contains(&value)) {
                return Err(format!("the {name} jitter must be in [0, 1), got {value}"));
            }
        }
        Ok(())
    }

    /// Draws `count` views' parameters from `rng`, for images with `channels` channels (colour
    /// draws are made for RGB only, so a grey run's sequence does not depend on them).
    pub fn draw(&self, rng: &mut StdRng, count: usize, channels: usize) -> Vec<ViewDraw> {
        (0..count).map(|_| self.draw_one(rng, channels)).collect()
    }

    fn draw_one(&self, rng: &mut StdRng, channels: usize) -> ViewDraw {
        let crop = self.draw_crop(rng);
        let flip = rng.random::<f64>() < self.flip_probability;
        let mut factor = |spread: f64| 1.0 + spread * (2.0 * rng.random::<f64>() - 1.0);
        let brightness = factor(self.brightness);
        let contrast = factor(self.contrast);
        let (saturation, grey) = if channels == 3 {
            let saturation = factor(self.saturation);
            (saturation, rng.random::<f64>() < self.grey_probability)
        } else {
            (1.0, false)
        };
        ViewDraw { crop, flip, brightness, contrast, saturation, grey }
    }

    /// A crop of area and aspect drawn uniformly (aspect on a log scale) that fits the image,
    /// placed uniformly; the whole image when no draw fits.
    fn draw_crop(&self, rng: &mut StdRng) -> CropBox {
        let (log_min, log_max) = (self.min_aspect.ln(), self.max_aspect.ln());
        for _ in 0..CROP_ATTEMPTS {
            let area = self.min_area + (self.max_area - self.min_area) * rng.random::<f64>();
            let aspect = (log_min + (log_max - log_min) * rng.random::<f64>()).exp();
            let width = (area * aspect).sqrt();
            let height = (area / aspect).sqrt();
            if width <= 1.0 && height <= 1.0 {
                let centre_x = width / 2.0 + (1.0 - width) * rng.random::<f64>();
                let centre_y = height / 2.0 + (1.0 - height) * rng.random::<f64>();
                return CropBox { centre_x, centre_y, width, height };
            }
        }
        CropBox { centre_x: 0.5, centre_y: 0.5, width: 1.0, height: 1.0 }
    }
}

/// Per image, the values a view is made from: the affine map's six entries, then brightness,
/// contrast, saturation and greyscale (1 or 0), at these positions.
const VALUES_PER_DRAW: i64 = 10;
const AFFINE_ENTRIES: i64 = 6;
const BRIGHTNESS: i64 = 6;
const CONTRAST: i64 = 7;
const SATURATION: i64 = 8;
const GREY: i64 = 9;

/// Makes the views of `images` `[N, C, H, W]` (values in [0, 1]) described by `draws` (one per
/// image), on the images' device: each crop is resampled bilinearly to the full size, then
/// brightness, contrast, saturation and greyscale are applied, each clamped to [0, 1]. The draws
/// (and the luma weights) go to the device in one upload that does not wait for it.
pub fn make_views(images: &Tensor, draws: &[ViewDraw]) -> Tensor {
    let [n, channels, height, width] = images.size()[..] else { panic!("images must be [N, C, H, W]") };
    assert_eq!(n as usize, draws.len(), "one draw per image");
    // affine_grid maps output coordinates in [-1, 1] to input coordinates: x_in = a·x_out + t.
    let mut values: Vec<f32> = draws
        .iter()
        .flat_map(|draw| {
            let CropBox { centre_x, centre_y, width, height } = draw.crop;
            let sign = if draw.flip { -1.0 } else { 1.0 };
            let grey = if draw.grey { 1.0 } else { 0.0 };
            [
                sign * width,
                0.0,
                2.0 * centre_x - 1.0,
                0.0,
                height,
                2.0 * centre_y - 1.0,
                draw.brightness,
                draw.contrast,
                draw.saturation,
                grey,
            ]
            .map(|v| v as f32)
        })
        .collect();
    values.extend(LUMA.map(|w| w as f32));
    let values = upload(&values, images.device());
    let per_draw = values.narrow(0, 0, n * VALUES_PER_DRAW).view([n, VALUES_PER_DRAW]);
    let column = |index: i64| per_draw.narrow(1, index, 1).view([n, 1, 1, 1]);
    let luma = values.narrow(0, n * VALUES_PER_DRAW, 3).view([1, 3, 1, 1]);
    let theta = per_draw.narrow(1, 0, AFFINE_ENTRIES).reshape([n, 2, 3]);
    let images = images.to_kind(Kind::Float).contiguous();
    let grid = Tensor::affine_grid_generator(&theta, [n, channels, height, width], false);
    // Bilinear (0) with border padding (1): a crop never leaves the image, so border only
    // decides the half-pixel at the edge.
    let mut views = Tensor::grid_sampler(&images, &grid, 0, 1, false);

    views = (views * column(BRIGHTNESS)).clamp(0.0, 1.0);
    let mean_grey = grey_level(&views, &luma).mean_dim([1, 2, 3].as_slice(), true, Kind::Float);
    views = ((&views - &mean_grey) * column(CONTRAST) + &mean_grey).clamp(0.0, 1.0);
    if channels == 3 {
        let grey = grey_level(&views, &luma);
        views = ((&views - &grey) * column(SATURATION) + &grey).clamp(0.0, 1.0);
        let grey = grey_level(&views, &luma).expand_as(&views);
        views = grey.where_self(&column(GREY).to_kind(Kind::Bool), &views);
    }
    views
}

/// Grey level `[N, 1, H, W]` of `[N, C, H, W]` images: the channel itself for grey images, the
/// luma (weights `luma`, `[1, 3, 1, 1]`) for RGB.
fn grey_level(images: &Tensor, luma: &Tensor) -> Tensor {
    if images.size()[1] == 1 {
        return images.shallow_clone();
    }
    (images * luma).sum_dim_intlist([1].as_slice(), true, Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use tch::Device;

    /// One view made pixel by pixel on the host, written from the sampling formula of
    /// `grid_sample` (align_corners = false, border padding) and the jitter definitions above.
    fn reference_view(pixels: &[f32], channels: usize, size: usize, draw: &ViewDraw) -> Vec<f32> {
        let plane = size * size;
        let source = |c: usize, y: usize, x: usize| f64::from(pixels[c * plane + y * size + x]);
        let to_pixel =
            |normalised: f64| (((normalised + 1.0) * size as f64 - 1.0) / 2.0).clamp(0.0, (size - 1) as f64);
        let CropBox { centre_x, centre_y, width, height } = draw.crop;
        let sign = if draw.flip { -1.0 } else { 1.0 };
        let mut view = vec![0.0f64; channels * plane];
        for y in 0..size {
            for x in 0..size {
                let out_x = (2 * x + 1) as f64 / size as f64 - 1.0;
                let out_y = (2 * y + 1) as f64 / size as f64 - 1.0;
                let in_x = to_pixel(sign * width * out_x + 2.0 * centre_x - 1.0);
                let in_y = to_pixel(height * out_y + 2.0 * centre_y - 1.0);
                let (x0, y0) = (in_x.floor() as usize, in_y.floor() as usize);
                let (x1, y1) = ((x0 + 1).min(size - 1), (y0 + 1).min(size - 1));
                let (fx, fy) = (in_x - x0 as f64, in_y - y0 as f64);
                for c in 0..channels {
                    let top = source(c, y0, x0) * (1.0 - fx) + source(c, y0, x1) * fx;
                    let bottom = source(c, y1, x0) * (1.0 - fx) + source(c, y1, x1) * fx;
                    view[c * plane + y * size + x] = top * (1.0 - fy) + bottom * fy;
                }
            }
        }
        let clamp = |v: f64| v.clamp(0.0, 1.0);
        let grey_of = |view: &[f64], p: usize| {
            if channels == 1 { view[p] } else { (0..3).map(|c| LUMA[c] * view[c * plane + p]).sum() }
        };
        view.iter_mut().for_each(|v| *v = clamp(*v * draw.brightness));
        let mean = (0..plane).map(|p| grey_of(&view, p)).sum::<f64>() / plane as f64;
        view.iter_mut().for_each(|v| *v = clamp((*v - mean) * draw.contrast + mean));
        if channels == 3 {
            for p in 0..plane {
                let grey = grey_of(&view, p);
                for c in 0..3 {
                    view[c * plane + p] = clamp((view[c * plane + p] - grey) * draw.saturation + grey);
                }
                if draw.grey {
                    let grey = grey_of(&view, p);
                    (0..3).for_each(|c| view[c * plane + p] = grey);
                }
            }
        }
        view.into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn crops_lie_inside_the_image_within_their_area_and_aspect_bounds() {
        let augmentation = ViewAugmentation::default();
        let draws = augmentation.draw(&mut StdRng::seed_from_u64(7), 5000, 3);
        let tolerance = 1e-12;
        for draw in &draws {
            let CropBox { centre_x, centre_y, width, height } = draw.crop;
            assert!(centre_x - width / 2.0 >= -tolerance && centre_x + width / 2.0 <= 1.0 + tolerance);
            assert!(centre_y - height / 2.0 >= -tolerance && centre_y + height / 2.0 <= 1.0 + tolerance);
            let whole_image = width == 1.0 && height == 1.0;
            let area = width * height;
            let aspect = width / height;
            assert!(whole_image || (0.3 - tolerance..=1.0 + tolerance).contains(&area), "area {area}");
            assert!(
                whole_image || (0.75 - tolerance..=4.0 / 3.0 + tolerance).contains(&aspect),
                "aspect {aspect}"
            );
            assert!((0.8..=1.2).contains(&draw.brightness));
            assert!((0.7..=1.3).contains(&draw.contrast));
            assert!((0.6..=1.4).contains(&draw.saturation));
        }
        let share = |count: usize| count as f64 / draws.len() as f64;
        let flips = share(draws.iter().filter(|d| d.flip).count());
        let greys = share(draws.iter().filter(|d| d.grey).count());
        assert!((flips - 0.5).abs() < 0.03, "flip share {flips}");
        assert!((greys - 0.2).abs() < 0.03, "grey share {greys}");
        // The draws cover their ranges rather than sitting in one corner of them.
        let areas: Vec<f64> = draws.iter().map(|d| d.crop.width * d.crop.height).collect();
        assert!(areas.iter().any(|&a| a < 0.35) && areas.iter().any(|&a| a > 0.95));
        assert!(draws.iter().any(|d| d.brightness < 0.85) && draws.iter().any(|d| d.brightness > 1.15));
    }

    #[test]
    fn grey_runs_draw_no_colour_jitter_and_fixed_seeds_repeat() {
        let augmentation = ViewAugmentation::default();
        let grey = augmentation.draw(&mut StdRng::seed_from_u64(3), 200, 1);
        assert!(grey.iter().all(|d| d.saturation == 1.0 && !d.grey));
        assert_eq!(grey, augmentation.draw(&mut StdRng::seed_from_u64(3), 200, 1));
        assert_ne!(grey, augmentation.draw(&mut StdRng::seed_from_u64(4), 200, 1));
    }

    #[test]
    fn the_batched_views_equal_views_made_pixel_by_pixel() {
        for channels in [1usize, 3] {
            let size = 12usize;
            let count = 16usize;
            let mut rng = StdRng::seed_from_u64(11 + channels as u64);
            let pixels: Vec<f32> = (0..count * channels * size * size).map(|_| rng.random::<f32>()).collect();
            let images =
                Tensor::from_slice(&pixels).view([count as i64, channels as i64, size as i64, size as i64]);
            let mut draws = ViewAugmentation::default().draw(&mut rng, count, channels);
            // Make sure both flip states, both grey states and the whole-image crop are covered.
            draws[0].flip = true;
            draws[1].flip = false;
            draws[2].crop = CropBox { centre_x: 0.5, centre_y: 0.5, width: 1.0, height: 1.0 };
            if channels == 3 {
                draws[3].grey = true;
                draws[4].grey = false;
            }
            let views = make_views(&images, &draws);
            assert_eq!(views.size(), images.size());
            let batched = Vec::<f32>::try_from(views.flatten(0, -1)).unwrap();
            let image_len = channels * size * size;
            for (index, draw) in draws.iter().enumerate() {
                let one = &pixels[index * image_len..(index + 1) * image_len];
                let expected = reference_view(one, channels, size, draw);
                let got = &batched[index * image_len..(index + 1) * image_len];
                let largest = expected.iter().zip(got).map(|(e, g)| (e - g).abs()).fold(0.0f32, f32::max);
                assert!(largest < 1e-5, "channels {channels}, view {index}: differs by {largest}");
            }
        }
    }

    #[test]
    fn an_identity_draw_returns_the_image_and_a_flip_mirrors_it() {
        let image = Tensor::rand([2, 1, 8, 8], (Kind::Float, Device::Cpu));
        let identity = ViewDraw {
            crop: CropBox { centre_x: 0.5, centre_y: 0.5, width: 1.0, height: 1.0 },
            flip: false,
            brightness: 1.0,
            contrast: 1.0,
            saturation: 1.0,
            grey: false,
        };
        let same = make_views(&image, &[identity, identity]);
        assert!(same.allclose(&image, 1e-6, 1e-6, false));
        let flipped = make_views(&image, &[ViewDraw { flip: true, ..identity }, identity]);
        assert!(flipped.get(0).allclose(&image.get(0).flip([2]), 1e-6, 1e-6, false));
        assert!(flipped.get(1).allclose(&image.get(1), 1e-6, 1e-6, false));
    }

    #[test]
    fn unusable_ranges_are_refused_with_a_reason() {
        let good = ViewAugmentation::default();
        good.validate().unwrap();
        for bad in [
            ViewAugmentation { min_area: 0.0, ..good },
            ViewAugmentation { min_area: 0.8, max_area: 0.5, ..good },
            ViewAugmentation { max_area: 1.5, ..good },
            ViewAugmentation { min_aspect: 2.0, max_aspect: 1.0, ..good },
            ViewAugmentation { flip_probability: 1.5, ..good },
            ViewAugmentation { brightness: 1.0, ..good },
            ViewAugmentation { contrast: f64::NAN, ..good },
        ] {
            assert!(!bad.validate().unwrap_err().is_empty());
        }
    }
}
