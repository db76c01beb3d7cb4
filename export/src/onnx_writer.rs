//! Turns an [`EncoderGraph`] and its metadata into an ONNX `ModelProto`, one emitter per op.

use crate::graph::{EncoderGraph, Initializer, InitializerValues, Node, Op};
use dim_models::onnx_metadata::{INPUT_NAME, ModelMetadata};
use dim_models::onnx_schema::{
    AttributeProto, AttributeType, DATA_TYPE_FLOAT, DATA_TYPE_INT64, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto, type_proto,
};
use prost::Message;

/// Version of the default (`ai.onnx`) operator set the graph uses.
pub const OPSET_VERSION: i64 = 17;
/// ONNX IR version matching [`OPSET_VERSION`] (ONNX 1.12); every ONNX Runtime since 1.12 reads it.
pub const IR_VERSION: i64 = 8;
/// Name of the symbolic batch dimension of the input and outputs.
pub const BATCH_DIM: &str = "batch";
/// `ModelProto.producer_name`.
pub const PRODUCER_NAME: &str = "dim-export";

/// Serialises the model to protobuf bytes.
pub fn encode_model(graph: &EncoderGraph, metadata: &ModelMetadata) -> Vec<u8> {
    model_proto(graph, metadata).encode_to_vec()
}

/// Builds the `ModelProto` for `graph` with `metadata` as its `metadata_props`.
pub fn model_proto(graph: &EncoderGraph, metadata: &ModelMetadata) -> ModelProto {
    let [channels, height, width] = graph.input_chw;
    let input = value_info(INPUT_NAME, &[channels, height, width]);
    let output = graph.outputs.iter().map(|o| value_info(&o.name, &[o.width])).collect();
    ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET_VERSION) }],
        producer_name: Some(PRODUCER_NAME.to_string()),
        producer_version: Some(metadata.toolkit_version.clone()),
        domain: None,
        model_version: Some(1),
        doc_string: Some(format!(
            "Deep InfoMax encoder ({preset}, {channels} channel(s), {height}x{width}). Input `{INPUT_NAME}` is \
             float32 [N, C, H, W] in [0, 1]; outputs are the flattened last conv map, the hidden FC \
             layer, the global vector Y, and the L2-normalised `{source}` tap as `embedding`.",
            preset = metadata.preset,
            source = metadata.embedding_source,
        )),
        graph: Some(GraphProto {
            node: graph.nodes.iter().map(node_proto).collect(),
            name: Some(graph.name.clone()),
            initializer: graph.initializers.iter().map(tensor_proto).collect(),
            doc_string: Some("BatchNorm layers are folded into the preceding Conv or Gemm.".to_string()),
            input: vec![input],
            output,
        }),
        metadata_props: metadata
            .to_props()
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key: Some(key), value: Some(value) })
            .collect(),
    }
}

/// A float32 `[batch, dims...]` value.
fn value_info(name: &str, dims: &[usize]) -> ValueInfoProto {
    use tensor_shape_proto::{Dimension, dimension::Value};
    let batch = Dimension { value: Some(Value::DimParam(BATCH_DIM.to_string())) };
    let fixed = dims.iter().map(|&d| Dimension { value: Some(Value::DimValue(d as i64)) });
    let shape = TensorShapeProto { dim: std::iter::once(batch).chain(fixed).collect() };
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DATA_TYPE_FLOAT),
                shape: Some(shape),
            })),
        }),
        doc_string: None,
    }
}

fn tensor_proto(initializer: &Initializer) -> TensorProto {
    let (data_type, raw): (i32, Vec<u8>) = match &initializer.values {
        InitializerValues::Float(values) => {
            (DATA_TYPE_FLOAT, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
        InitializerValues::Int64(values) => {
            (DATA_TYPE_INT64, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    };
    TensorProto {
        dims: initializer.shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type),
        name: Some(initializer.name.clone()),
        raw_data: Some(raw),
    }
}

/// The emitter table: each op's ONNX type and attributes.
fn node_proto(node: &Node) -> NodeProto {
    let (op_type, attribute) = match node.op {
        Op::Mul => ("Mul", Vec::new()),
        Op::Sub => ("Sub", Vec::new()),
        Op::Conv { kernel, stride, padding } => ("Conv", window_attributes(kernel, stride, padding)),
        Op::MaxPool { kernel, stride, padding } => ("MaxPool", window_attributes(kernel, stride, padding)),
        Op::Relu => ("Relu", Vec::new()),
        Op::Flatten => ("Flatten", vec![int("axis", 1)]),
        // Weights are stored `[out, in]` as in the checkpoint.
        Op::Gemm => ("Gemm", vec![int("transB", 1)]),
        // Opset 17 takes the axes as an attribute (opset 18 moved them to an input).
        Op::ReduceL2 => ("ReduceL2", vec![ints("axes", &[1]), int("keepdims", 1)]),
        Op::Max => ("Max", Vec::new()),
        Op::Div => ("Div", Vec::new()),
        Op::Add => ("Add", Vec::new()),
        Op::Reshape => ("Reshape", Vec::new()),
        Op::Transpose { perm } => ("Transpose", vec![ints("perm", perm)]),
    };
    NodeProto {
        input: node.inputs.clone(),
        output: vec![node.output.clone()],
        name: Some(node.name.clone()),
        op_type: Some(op_type.to_string()),
        attribute,
        doc_string: None,
        domain: None,
    }
}

/// Square kernel, equal strides and symmetric padding of a 2-D conv or pool.
fn window_attributes(kernel: usize, stride: usize, padding: usize) -> Vec<AttributeProto> {
    let (k, s, p) = (kernel as i64, stride as i64, padding as i64);
    vec![ints("kernel_shape", &[k, k]), ints("strides", &[s, s]), ints("pads", &[p, p, p, p])]
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ints: Vec::new(),
    }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Ints as i32),
        i: None,
        ints: values.to_vec(),
    }
}
