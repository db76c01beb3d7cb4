//! The parameter-name contract: the names and shapes of every encoder tensor a checkpoint holds.
//!
//! The trainer creates its tch variables under exactly these paths (`encoder.conv1.conv.weight`,
//! ...) and the exporter reads them back by the same names; a test on each side checks the sets
//! are equal.

use crate::preset::{EncoderConfig, LayerKind};

/// Prefix of every encoder tensor in a checkpoint's weights file.
pub const ENCODER_PREFIX: &str = "encoder";

/// Epsilon of every BatchNorm layer (PyTorch's default).
pub const BATCH_NORM_EPSILON: f64 = 1e-5;

/// One named tensor with its expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterSpec {
    /// Full name, e.g. `encoder.conv1.bn.running_mean`.
    pub name: String,
    /// Expected shape.
    pub shape: Vec<usize>,
}

/// Names of a BatchNorm's four tensors under `prefix`.
pub fn batch_norm_names(prefix: &str) -> [String; 4] {
    ["weight", "bias", "running_mean", "running_var"].map(|t| format!("{prefix}.bn.{t}"))
}

/// Every tensor of the encoder, in layer order.
pub fn encoder_parameters(config: &EncoderConfig) -> Vec<ParameterSpec> {
    let mut specs = Vec::new();
    let mut push = |name: String, shape: Vec<usize>| specs.push(ParameterSpec { name, shape });
    for layer in config.conv_layers().iter().chain(config.fc_layers().iter()) {
        let prefix = format!("{ENCODER_PREFIX}.{}", layer.name);
        match layer.kind {
            LayerKind::Conv { in_channels, out_channels, kernel, .. } => {
                push(format!("{prefix}.conv.weight"), vec![out_channels, in_channels, kernel, kernel]);
                for name in batch_norm_names(&prefix) {
                    push(name, vec![out_channels]);
                }
            }
            LayerKind::Bottleneck(block) => {
                for conv in block.convs() {
                    let prefix = format!("{prefix}.{}", conv.part);
                    let shape = vec![conv.out_channels, conv.in_channels, conv.kernel, conv.kernel];
                    push(format!("{prefix}.conv.weight"), shape);
                    for name in batch_norm_names(&prefix) {
                        push(name, vec![conv.out_channels]);
                    }
                }
            }
            LayerKind::MaxPool { .. } | LayerKind::StridedCrops { .. } | LayerKind::FoldCrops { .. } => {}
            LayerKind::Linear { in_features, out_features, batch_norm_relu } => {
                push(format!("{prefix}.linear.weight"), vec![out_features, in_features]);
                push(format!("{prefix}.linear.bias"), vec![out_features]);
                if batch_norm_relu {
                    for name in batch_norm_names(&prefix) {
                        push(name, vec![out_features]);
                    }
                }
            }
        }
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Preset;

    #[test]
    fn basic32x32_has_about_the_papers_parameter_count() {
        let config = EncoderConfig::new(Preset::Basic32x32, 3).unwrap();
        let specs = encoder_parameters(&config);
        assert!(specs.iter().any(|s| s.name == "encoder.conv2.conv.weight" && s.shape == [128, 64, 4, 4]));
        assert!(specs.iter().any(|s| s.name == "encoder.y.linear.weight" && s.shape == [64, 1024]));
        let trainable: usize = specs
            .iter()
            .filter(|s| !s.name.contains("running_"))
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        // DIM.md: ~4.9M parameters for basic32x32 on RGB input.
        assert!((4_700_000..5_100_000).contains(&trainable), "{trainable}");
    }

    #[test]
    fn resnet_blocks_name_each_conv_and_its_batch_norm() {
        let config = EncoderConfig::new(Preset::ResNet19_32x32, 3).unwrap();
        let specs = encoder_parameters(&config);
        let shape_of = |name: &str| specs.iter().find(|s| s.name == name).map(|s| s.shape.clone());
        assert_eq!(shape_of("encoder.conv1.conv.weight"), Some(vec![64, 3, 3, 3]));
        assert_eq!(shape_of("encoder.block1.reduce.conv.weight"), Some(vec![64, 64, 1, 1]));
        assert_eq!(shape_of("encoder.block1.shortcut.conv.weight"), Some(vec![256, 64, 1, 1]));
        assert_eq!(shape_of("encoder.block3.spatial.conv.weight"), Some(vec![128, 128, 3, 3]));
        assert_eq!(shape_of("encoder.block3.expand.bn.running_var"), Some(vec![512]));
        assert_eq!(shape_of("encoder.block2.shortcut.conv.weight"), None, "identity shortcut");
        assert_eq!(shape_of("encoder.fc1.linear.weight"), Some(vec![1024, 1024 * 4 * 4]));
        let folded = EncoderConfig::new(Preset::FoldResNet19_32x32, 3).unwrap();
        let specs = encoder_parameters(&folded);
        let fc1 = specs.iter().find(|s| s.name == "encoder.fc1.linear.weight").unwrap();
        assert_eq!(fc1.shape, [1024, 1024 * 7 * 7]);
    }
}
