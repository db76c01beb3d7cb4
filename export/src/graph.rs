//! The encoder as a small framework-neutral graph: ops with named inputs and outputs, and float
//! initialisers. It is built from the shared preset (`conv_layers`, `fc_layers`) and a
//! checkpoint's weights, with every BatchNorm folded into the layer before it; writing it as
//! ONNX is a separate step ([`crate::onnx_writer`]).

use crate::batch_norm_folding::{BatchNormStats, fold};
use crate::checkpoint::EncoderCheckpoint;
use dim_models::onnx_metadata::{INPUT_NAME, OUTPUT_CONV, OUTPUT_EMBEDDING, OUTPUT_FC, OUTPUT_Y};
use dim_models::parameters::{ENCODER_PREFIX, batch_norm_names};
use dim_models::tap::Tap;
use dim_models::{Bottleneck, LayerKind};

/// Smallest norm the embedding is divided by, so an all-zero feature stays finite (zero).
pub const NORM_FLOOR: f32 = 1e-12;

/// An operation of the graph, with its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Element-wise product (with broadcasting).
    Mul,
    /// Element-wise difference (with broadcasting).
    Sub,
    /// 2-D convolution with bias, square kernel, symmetric zero padding.
    Conv {
        /// Kernel side.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding on each side.
        padding: usize,
    },
    /// Max-pool with a square window, symmetric padding.
    MaxPool {
        /// Window side.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding on each side.
        padding: usize,
    },
    /// `max(x, 0)`.
    Relu,
    /// `[N, ...] → [N, product]`, keeping row-major (channel-major) order.
    Flatten,
    /// `x · Wᵀ + b` with `W` stored `[out, in]`.
    Gemm,
    /// L2 norm over axis 1, keeping the axis.
    ReduceL2,
    /// Element-wise maximum.
    Max,
    /// Element-wise quotient.
    Div,
    /// Element-wise sum (the residual connection).
    Add,
    /// Reshape to the shape held by the second input (an int64 initialiser; −1 infers a dim).
    Reshape,
    /// Axis permutation.
    Transpose {
        /// Output axis `i` is input axis `perm[i]`.
        perm: &'static [i64],
    },
}

/// One operation applied to named values.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Unique node name.
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Input value names.
    pub inputs: Vec<String>,
    /// Output value name.
    pub output: String,
}

/// A constant tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Initializer {
    /// Value name.
    pub name: String,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: InitializerValues,
}

/// The element type and values of an initialiser.
#[derive(Debug, Clone, PartialEq)]
pub enum InitializerValues {
    /// Weights and scalar constants.
    Float(Vec<f32>),
    /// Shapes for `Reshape`.
    Int64(Vec<i64>),
}

/// A graph output: a `[N, width]` float tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphOutput {
    /// Value name.
    pub name: String,
    /// Feature width.
    pub width: usize,
}

/// The encoder graph: input `image` `[N, C, H, W]`, outputs `conv`, `fc`, `y`, `embedding`.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderGraph {
    /// Graph name.
    pub name: String,
    /// Input `[C, H, W]` (the batch dimension is symbolic).
    pub input_chw: [usize; 3],
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// Weights and constants.
    pub initializers: Vec<Initializer>,
    /// Outputs in graph order.
    pub outputs: Vec<GraphOutput>,
}

impl EncoderGraph {
    /// Builds the graph of `checkpoint`'s encoder with `embedding` normalising the chosen tap.
    pub fn build(checkpoint: &EncoderCheckpoint, embedding: Tap) -> Self {
        let config = &checkpoint.config.encoder;
        let size = config.input_size();
        let mut builder = GraphBuilder { checkpoint, nodes: Vec::new(), initializers: Vec::new() };

        // The encoder was trained on images in [−1, 1]; the graph takes [0, 1] like every image
        // loader, so the scaling cannot be forgotten by a caller.
        builder.constant("two", 2.0);
        builder.constant("one", 1.0);
        let doubled = builder.node("input_scale/mul", Op::Mul, &[INPUT_NAME, "two"], "image_doubled");
        let mut x = builder.node("input_scale/sub", Op::Sub, &[&doubled, "one"], "image_signed");

        let layers = config.conv_layers();
        let input_shapes = std::iter::once(config.input_shape()).chain(config.trunk_output_shapes());
        for (layer, [channels, height, width]) in layers.iter().zip(input_shapes) {
            x = match layer.kind {
                LayerKind::Conv { kernel, stride, padding, .. } => {
                    let conv = builder.folded_conv(&layer.name, &x, kernel, stride, padding);
                    builder.node(&format!("{}/relu", layer.name), Op::Relu, &[&conv], &layer.name)
                }
                LayerKind::MaxPool { kernel, stride, padding } => {
                    let op = Op::MaxPool { kernel, stride, padding };
                    builder.node(&layer.name, op, &[&x], &layer.name)
                }
                LayerKind::Bottleneck(block) => builder.bottleneck(&layer.name, &x, &block),
                LayerKind::StridedCrops { crop, stride } => {
                    let grid = dim_models::preset::crop_grid(height, crop, stride);
                    builder.strided_crops(&layer.name, &x, channels, crop, stride, grid)
                }
                LayerKind::FoldCrops { grid } => {
                    builder.fold_crops(&layer.name, &x, channels * height * width, grid)
                }
                LayerKind::Linear { .. } => unreachable!("conv_layers holds no linear layers"),
            };
        }
        let mut h = builder.node("flatten", Op::Flatten, &[&x], OUTPUT_CONV);

        let fc_layers = config.fc_layers();
        let last_hidden = fc_layers.len() - 2;
        for (index, layer) in fc_layers.iter().enumerate() {
            let LayerKind::Linear { batch_norm_relu, .. } = layer.kind else {
                unreachable!("fc_layers holds only linear layers")
            };
            let prefix = format!("{ENCODER_PREFIX}.{}", layer.name);
            let weight_name = format!("{prefix}.linear.weight");
            let bias_name = format!("{prefix}.linear.bias");
            let output = match (batch_norm_relu, index == last_hidden) {
                (false, _) => OUTPUT_Y.to_string(),
                (true, true) => OUTPUT_FC.to_string(),
                (true, false) => layer.name.clone(),
            };
            let (weight, bias) = (format!("{}.weight", layer.name), format!("{}.bias", layer.name));
            if batch_norm_relu {
                builder.folded_weights(&layer.name, &weight_name, Some(&bias_name), &prefix);
                let gemm = builder.node(
                    &format!("{}/gemm", layer.name),
                    Op::Gemm,
                    &[&h, &weight, &bias],
                    &format!("{}.linear", layer.name),
                );
                h = builder.node(&format!("{}/relu", layer.name), Op::Relu, &[&gemm], &output);
            } else {
                builder.copied(&weight, &weight_name);
                builder.copied(&bias, &bias_name);
                h = builder.node(&format!("{}/gemm", layer.name), Op::Gemm, &[&h, &weight, &bias], &output);
            }
        }

        let source = embedding.name();
        builder.constant("norm_floor", NORM_FLOOR);
        let norm = builder.node("embedding/norm", Op::ReduceL2, &[source], "embedding.norm");
        let floored =
            builder.node("embedding/floor", Op::Max, &[&norm, "norm_floor"], "embedding.norm_floored");
        builder.node("embedding/divide", Op::Div, &[source, &floored], OUTPUT_EMBEDDING);

        let dims = config.tap_dims();
        let output = |name: &str, width| GraphOutput { name: name.to_string(), width };
        EncoderGraph {
            name: format!("dim_encoder_{}", config.preset.name()),
            input_chw: [config.in_channels, size, size],
            nodes: builder.nodes,
            initializers: builder.initializers,
            outputs: Tap::ALL
                .map(|tap| output(tap.name(), tap.width(&dims)))
                .into_iter()
                .chain([output(OUTPUT_EMBEDDING, embedding.width(&dims))])
                .collect(),
        }
    }
}

/// Accumulates nodes and initialisers while walking the layers.
struct GraphBuilder<'a> {
    checkpoint: &'a EncoderCheckpoint,
    nodes: Vec<Node>,
    initializers: Vec<Initializer>,
}

impl GraphBuilder<'_> {
    /// Adds a node and returns its output's name.
    fn node(&mut self, name: &str, op: Op, inputs: &[&str], output: &str) -> String {
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            output: output.to_string(),
        });
        output.to_string()
    }

    fn constant(&mut self, name: &str, value: f32) {
        self.initializers.push(Initializer {
            name: name.to_string(),
            shape: Vec::new(),
            values: InitializerValues::Float(vec![value]),
        });
    }

    /// A `Reshape` of `input` to `shape`, its shape initialiser named after the node.
    fn reshape(&mut self, name: &str, input: &str, shape: &[i64], output: &str) -> String {
        let shape_name = format!("{name}.shape");
        self.initializers.push(Initializer {
            name: shape_name.clone(),
            shape: vec![shape.len()],
            values: InitializerValues::Int64(shape.to_vec()),
        });
        self.node(name, Op::Reshape, &[input, &shape_name], output)
    }

    fn copied(&mut self, name: &str, tensor: &str) {
        let tensor = self.checkpoint.tensor(tensor);
        self.initializers.push(Initializer {
            name: name.to_string(),
            shape: tensor.shape.clone(),
            values: InitializerValues::Float(tensor.values.clone()),
        });
    }

    /// The conv under `{ENCODER_PREFIX}.{layer}` with its BatchNorm folded in, applied to `x`;
    /// returns the conv's output (before any activation), named `{layer}.conv`.
    fn folded_conv(&mut self, layer: &str, x: &str, kernel: usize, stride: usize, padding: usize) -> String {
        let prefix = format!("{ENCODER_PREFIX}.{layer}");
        self.folded_weights(layer, &format!("{prefix}.conv.weight"), None, &prefix);
        let (weight, bias) = (format!("{layer}.weight"), format!("{layer}.bias"));
        let op = Op::Conv { kernel, stride, padding };
        self.node(&format!("{layer}/conv"), op, &[x, &weight, &bias], &format!("{layer}.conv"))
    }

    /// A bottleneck residual block: three folded convs (ReLU after the first two), the input
    /// or its shortcut conv added, then ReLU.
    fn bottleneck(&mut self, name: &str, x: &str, block: &Bottleneck) -> String {
        let mut h = x.to_string();
        for (index, conv) in block.branch().iter().enumerate() {
            let part = format!("{name}.{}", conv.part);
            h = self.folded_conv(&part, &h, conv.kernel, conv.stride, conv.padding);
            if index < 2 {
                h = self.node(&format!("{part}/relu"), Op::Relu, &[&h], &part);
            }
        }
        let residual = match block.shortcut() {
            Some(conv) => {
                let part = format!("{name}.{}", conv.part);
                self.folded_conv(&part, x, conv.kernel, conv.stride, conv.padding)
            }
            None => x.to_string(),
        };
        let sum = self.node(&format!("{name}/add"), Op::Add, &[&h, &residual], &format!("{name}.sum"));
        self.node(&format!("{name}/relu"), Op::Relu, &[&sum], name)
    }

    /// Strided crops as one convolution with a one-hot kernel (output channel `c·crop² + y·crop
    /// + x` copies input channel `c` at offset `(y, x)` exactly), then a reshape and transpose
    /// to `[N·grid², C, crop, crop]` in row-major grid order.
    fn strided_crops(
        &mut self,
        name: &str,
        x: &str,
        channels: usize,
        crop: usize,
        stride: usize,
        grid: usize,
    ) -> String {
        let taps = crop * crop;
        let mut one_hot = vec![0.0f32; channels * taps * channels * taps];
        for channel in 0..channels {
            for offset in 0..taps {
                let output_channel = channel * taps + offset;
                one_hot[(output_channel * channels + channel) * taps + offset] = 1.0;
            }
        }
        let kernel_name = format!("{name}.one_hot");
        self.initializers.push(Initializer {
            name: kernel_name.clone(),
            shape: vec![channels * taps, channels, crop, crop],
            values: InitializerValues::Float(one_hot),
        });
        let op = Op::Conv { kernel: crop, stride, padding: 0 };
        let patches =
            self.node(&format!("{name}/gather"), op, &[x, &kernel_name], &format!("{name}.patches"));
        let (c, k, g) = (channels as i64, crop as i64, grid as i64);
        let split =
            self.reshape(&format!("{name}/split"), &patches, &[-1, c, k, k, g, g], &format!("{name}.split"));
        let perm = Op::Transpose { perm: &[0, 4, 5, 1, 2, 3] };
        let by_crop = self.node(&format!("{name}/by_crop"), perm, &[&split], &format!("{name}.by_crop"));
        self.reshape(&format!("{name}/stack"), &by_crop, &[-1, c, k, k], name)
    }

    /// `[N·grid², C, h, w]` → `[N, C·h·w, grid, grid]`, as the trainer folds crop features
    /// (`per_crop` = C·h·w).
    fn fold_crops(&mut self, name: &str, x: &str, per_crop: usize, grid: usize) -> String {
        let (per_crop, grid) = (per_crop as i64, grid as i64);
        let grouped = self.reshape(
            &format!("{name}/group"),
            x,
            &[-1, grid * grid, per_crop],
            &format!("{name}.grouped"),
        );
        let perm = Op::Transpose { perm: &[0, 2, 1] };
        let by_feature =
            self.node(&format!("{name}/by_feature"), perm, &[&grouped], &format!("{name}.by_feature"));
        self.reshape(&format!("{name}/grid"), &by_feature, &[-1, per_crop, grid, grid], name)
    }

    /// Adds `{layer}.weight` and `{layer}.bias`: the checkpoint's weight (and bias) with the
    /// BatchNorm under `prefix` folded in.
    fn folded_weights(&mut self, layer: &str, weight: &str, bias: Option<&str>, prefix: &str) {
        let [gamma, beta, mean, var] =
            batch_norm_names(prefix).map(|name| &self.checkpoint.tensor(&name).values);
        let stats = BatchNormStats { weight: gamma, bias: beta, running_mean: mean, running_var: var };
        let weight = self.checkpoint.tensor(weight);
        let folded = fold(&weight.values, bias.map(|b| self.checkpoint.tensor(b).values.as_slice()), stats);
        let channels = folded.bias.len();
        self.initializers.push(Initializer {
            name: format!("{layer}.weight"),
            shape: weight.shape.clone(),
            values: InitializerValues::Float(folded.weight),
        });
        self.initializers.push(Initializer {
            name: format!("{layer}.bias"),
            shape: vec![channels],
            values: InitializerValues::Float(folded.bias),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::WeightTensor;
    use dim_models::checkpoint::{CHECKPOINT_FORMAT_VERSION, CheckpointConfig};
    use dim_models::parameters::encoder_parameters;
    use dim_models::preprocess::ResizePolicy;
    use dim_models::{EncoderConfig, Preset};

    /// An in-memory checkpoint with every contract tensor filled with ones.
    fn checkpoint_of_ones(preset: Preset, channels: usize) -> EncoderCheckpoint {
        let encoder = EncoderConfig::new(preset, channels).unwrap();
        let tensors = encoder_parameters(&encoder)
            .into_iter()
            .map(|spec| {
                let len = spec.shape.iter().product();
                (spec.name, WeightTensor { shape: spec.shape, values: vec![1.0; len] })
            })
            .collect();
        let config = CheckpointConfig {
            format_version: CHECKPOINT_FORMAT_VERSION,
            toolkit_version: dim_models::TOOLKIT_VERSION.into(),
            encoder,
            resize: ResizePolicy::Pad,
            background: dim_models::preprocess::Background::White,
            epoch: 0,
            step: 0,
            data_fingerprint: String::new(),
            training: serde_json::Value::Null,
        };
        EncoderCheckpoint { config, tensors, weights_sha256: String::new() }
    }

    fn op_names(graph: &EncoderGraph) -> Vec<&'static str> {
        graph
            .nodes
            .iter()
            .map(|node| match node.op {
                Op::Mul => "Mul",
                Op::Sub => "Sub",
                Op::Conv { .. } => "Conv",
                Op::MaxPool { .. } => "MaxPool",
                Op::Relu => "Relu",
                Op::Flatten => "Flatten",
                Op::Gemm => "Gemm",
                Op::ReduceL2 => "ReduceL2",
                Op::Max => "Max",
                Op::Div => "Div",
                Op::Add => "Add",
                Op::Reshape => "Reshape",
                Op::Transpose { .. } => "Transpose",
            })
            .collect()
    }

    fn floats(initializer: &Initializer) -> &[f32] {
        match &initializer.values {
            InitializerValues::Float(values) => values,
            InitializerValues::Int64(_) => panic!("{} holds int64 values", initializer.name),
        }
    }

    const SCALE: [&str; 2] = ["Mul", "Sub"];
    const CONV_RELU: [&str; 2] = ["Conv", "Relu"];
    const GEMM_RELU: [&str; 2] = ["Gemm", "Relu"];
    const NORMALISE: [&str; 3] = ["ReduceL2", "Max", "Div"];

    #[test]
    fn each_preset_has_its_op_sequence() {
        let expected = |body: &[&[&'static str]]| -> Vec<&'static str> {
            let mut ops = SCALE.to_vec();
            body.iter().for_each(|part| ops.extend_from_slice(part));
            ops.extend_from_slice(&NORMALISE);
            ops
        };
        let basic32 = EncoderGraph::build(&checkpoint_of_ones(Preset::Basic32x32, 1), Tap::Conv);
        assert_eq!(
            op_names(&basic32),
            expected(&[&CONV_RELU, &CONV_RELU, &CONV_RELU, &["Flatten"], &GEMM_RELU, &["Gemm"]])
        );
        assert_well_formed(&basic32, Tap::Conv);
        let basic64 = EncoderGraph::build(&checkpoint_of_ones(Preset::Basic64x64, 3), Tap::Conv);
        assert_well_formed(&basic64, Tap::Conv);
        assert_eq!(
            op_names(&basic64),
            expected(&[&CONV_RELU, &CONV_RELU, &CONV_RELU, &CONV_RELU, &["Flatten"], &GEMM_RELU, &["Gemm"]])
        );
        let alex = EncoderGraph::build(&checkpoint_of_ones(Preset::Alex64x64, 3), Tap::Y);
        assert_well_formed(&alex, Tap::Y);
        let pool = ["MaxPool"];
        assert_eq!(
            op_names(&alex),
            expected(&[
                &CONV_RELU,
                &pool,
                &CONV_RELU,
                &pool,
                &CONV_RELU,
                &CONV_RELU,
                &CONV_RELU,
                &pool,
                &["Flatten"],
                &GEMM_RELU,
                &GEMM_RELU,
                &["Gemm"]
            ])
        );
        assert_eq!(alex.outputs.iter().map(|o| o.width).collect::<Vec<_>>(), [192 * 8 * 8, 4096, 64, 64]);
    }

    /// Every value is defined once before it is read, every output is computed, and the
    /// embedding normalises `source`.
    fn assert_well_formed(graph: &EncoderGraph, source: Tap) {
        let mut defined: std::collections::HashSet<String> =
            graph.initializers.iter().map(|i| i.name.clone()).collect();
        assert!(defined.insert(INPUT_NAME.to_string()));
        for node in &graph.nodes {
            for input in &node.inputs {
                assert!(defined.contains(input), "{} reads undefined `{input}`", node.name);
            }
            assert!(defined.insert(node.output.clone()), "`{}` defined twice", node.output);
        }
        for output in &graph.outputs {
            assert!(defined.contains(&output.name), "output `{}` never computed", output.name);
        }
        let embedding = graph.nodes.iter().find(|n| n.output == OUTPUT_EMBEDDING).unwrap();
        assert_eq!(embedding.inputs[0], source.name());
    }

    #[test]
    fn residual_blocks_add_their_shortcut_and_strided_crops_gather_with_a_one_hot_kernel() {
        let resnet = EncoderGraph::build(&checkpoint_of_ones(Preset::ResNet19_32x32, 3), Tap::Conv);
        assert_well_formed(&resnet, Tap::Conv);
        let ops = op_names(&resnet);
        // conv1, then block1 (three convs, a shortcut conv, the add), block2 (identity shortcut).
        let block_with_shortcut = ["Conv", "Relu", "Conv", "Relu", "Conv", "Conv", "Add", "Relu"];
        let identity_block = ["Conv", "Relu", "Conv", "Relu", "Conv", "Add", "Relu"];
        assert_eq!(ops[2..4], CONV_RELU);
        assert_eq!(ops[4..12], block_with_shortcut);
        assert_eq!(ops[12..19], identity_block);
        assert_eq!(ops.iter().filter(|op| **op == "Add").count(), 6);
        let block2_add = resnet.nodes.iter().find(|n| n.name == "block2/add").unwrap();
        assert_eq!(block2_add.inputs, ["block2.expand.conv", "block1"]);
        assert_eq!(resnet.outputs[0].width, 1024 * 4 * 4);

        let folded = EncoderGraph::build(&checkpoint_of_ones(Preset::FoldResNet19_32x32, 3), Tap::Y);
        assert_well_formed(&folded, Tap::Y);
        let one_hot = folded.initializers.iter().find(|i| i.name == "crops.one_hot").unwrap();
        assert_eq!(one_hot.shape, [3 * 64, 3, 8, 8]);
        let ones = floats(one_hot);
        assert_eq!(ones.iter().filter(|&&v| v == 1.0).count(), 3 * 64);
        // Output channel 64 + 9 copies input channel 1 at offset (1, 1).
        assert_eq!(ones[((64 + 9) * 3 + 1) * 64 + 9], 1.0);
        let shape_of = |name: &str| match &folded.initializers.iter().find(|i| i.name == name).unwrap().values
        {
            InitializerValues::Int64(shape) => shape.clone(),
            InitializerValues::Float(_) => panic!("{name} is not a shape"),
        };
        assert_eq!(shape_of("crops/split.shape"), [-1, 3, 8, 8, 7, 7]);
        assert_eq!(shape_of("crops/stack.shape"), [-1, 3, 8, 8]);
        assert_eq!(shape_of("fold/group.shape"), [-1, 49, 1024]);
        assert_eq!(shape_of("fold/grid.shape"), [-1, 1024, 7, 7]);
        assert_eq!(folded.outputs[0].width, 1024 * 7 * 7);
    }

    #[test]
    fn values_flow_from_the_input_to_every_output_for_each_embedding_source() {
        for source in [Tap::Conv, Tap::Fc, Tap::Y] {
            let graph = EncoderGraph::build(&checkpoint_of_ones(Preset::Basic32x32, 1), source);
            assert_well_formed(&graph, source);
        }
    }

    #[test]
    fn batch_norm_is_folded_and_initialisers_have_the_layer_shapes() {
        let graph = EncoderGraph::build(&checkpoint_of_ones(Preset::Basic32x32, 3), Tap::Fc);
        let find = |name: &str| graph.initializers.iter().find(|i| i.name == name).unwrap();
        // All ones: s = 1/√(1+ε), bias = s·(0 − 1) + 1 for the bias-free conv.
        let s = (1.0 / (1.0 + dim_models::parameters::BATCH_NORM_EPSILON).sqrt()) as f32;
        let conv1 = find("conv1.weight");
        assert_eq!(conv1.shape, [64, 3, 4, 4]);
        assert!(floats(conv1).iter().all(|&w| (w - s).abs() < 1e-7));
        assert!(floats(find("conv1.bias")).iter().all(|&b| (b - (1.0 - s)).abs() < 1e-7));
        // fc1 has a bias of one: s·(1 − 1) + 1 = 1.
        assert_eq!(find("fc1.weight").shape, [1024, 4096]);
        assert!(floats(find("fc1.bias")).iter().all(|&b| (b - 1.0).abs() < 1e-7));
        assert_eq!(find("y.weight").shape, [64, 1024]);
        assert!("embed".parse::<Tap>().is_err());
        assert_eq!("fc".parse::<Tap>(), Ok(Tap::Fc));
    }
}
