//! The ONNX schema in one place: the subset of ONNX's protobuf messages that an encoder graph
//! needs, declared with `prost` derives so that no `protoc` or build script is required (dim-export
//! writes them), and in [`field`] the field numbers of the messages that dim-infer's graph pruning
//! reads on the wire. Field numbers follow the ONNX specification (`onnx.proto`); the tests tie
//! every number in [`field`] that the messages declare to the messages' own encoding. ONNX is
//! proto2, so scalars whose presence matters (attribute values, where 0 is meaningful) are
//! `optional` and always written when set.

/// `TensorProto.DataType.FLOAT`.
pub const DATA_TYPE_FLOAT: i32 = 1;
/// `TensorProto.DataType.INT64`.
pub const DATA_TYPE_INT64: i32 = 7;

/// A whole model: graph, operator sets and metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// ONNX IR version.
    #[prost(int64, optional, tag = "1")]
    pub ir_version: Option<i64>,
    /// Operator sets the graph uses.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Tool that wrote the model.
    #[prost(string, optional, tag = "2")]
    pub producer_name: Option<String>,
    /// Version of that tool.
    #[prost(string, optional, tag = "3")]
    pub producer_version: Option<String>,
    /// Reverse-DNS model namespace.
    #[prost(string, optional, tag = "4")]
    pub domain: Option<String>,
    /// Version of the model itself.
    #[prost(int64, optional, tag = "5")]
    pub model_version: Option<i64>,
    /// Human-readable description.
    #[prost(string, optional, tag = "6")]
    pub doc_string: Option<String>,
    /// The computation.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Free-form key/value metadata.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// One key/value pair.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    /// Key.
    #[prost(string, optional, tag = "1")]
    pub key: Option<String>,
    /// Value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// An operator set and its version.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// Domain; empty for the default `ai.onnx` domain.
    #[prost(string, optional, tag = "1")]
    pub domain: Option<String>,
    /// Operator set version.
    #[prost(int64, optional, tag = "2")]
    pub version: Option<i64>,
}

/// A graph: nodes in topological order, weights, inputs and outputs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// Nodes, topologically sorted.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Graph name.
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    /// Constant tensors (weights).
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Human-readable description.
    #[prost(string, optional, tag = "10")]
    pub doc_string: Option<String>,
    /// Graph inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Graph outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// One operator application.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// Input value names.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output value names.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Node name.
    #[prost(string, optional, tag = "3")]
    pub name: Option<String>,
    /// Operator, e.g. `Conv`.
    #[prost(string, optional, tag = "4")]
    pub op_type: Option<String>,
    /// Operator attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Human-readable description.
    #[prost(string, optional, tag = "6")]
    pub doc_string: Option<String>,
    /// Operator domain; empty for `ai.onnx`.
    #[prost(string, optional, tag = "7")]
    pub domain: Option<String>,
}

/// `AttributeProto.AttributeType` values used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum AttributeType {
    /// `i`.
    Int = 2,
    /// `ints`.
    Ints = 7,
}

/// A named operator attribute; exactly one value field is set, as `type` says.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// Attribute name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Which value field is in use.
    #[prost(enumeration = "AttributeType", optional, tag = "20")]
    pub r#type: Option<i32>,
    /// Integer value.
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    /// Integer list value.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

/// A dense tensor; values are stored little-endian in `raw_data`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// Shape.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// Element type (`TensorProto.DataType`).
    #[prost(int32, optional, tag = "2")]
    pub data_type: Option<i32>,
    /// Value name.
    #[prost(string, optional, tag = "8")]
    pub name: Option<String>,
    /// Values as little-endian bytes.
    #[prost(bytes = "vec", optional, tag = "9")]
    pub raw_data: Option<Vec<u8>>,
}

/// A named, typed value (graph input or output).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// Value name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Type and shape.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    /// Human-readable description.
    #[prost(string, optional, tag = "3")]
    pub doc_string: Option<String>,
}

/// A value's type; only dense tensors are used here.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// The type.
    #[prost(oneof = "type_proto::Value", tags = "1")]
    pub value: Option<type_proto::Value>,
}

/// Nested messages of [`TypeProto`].
pub mod type_proto {
    /// A dense tensor type.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        /// Element type (`TensorProto.DataType`).
        #[prost(int32, optional, tag = "1")]
        pub elem_type: Option<i32>,
        /// Shape, possibly with symbolic dimensions.
        #[prost(message, optional, tag = "2")]
        pub shape: Option<super::TensorShapeProto>,
    }

    /// The kinds of type this module writes.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// A dense tensor.
        #[prost(message, tag = "1")]
        TensorType(Tensor),
    }
}

/// A tensor shape.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// Dimensions, outermost first.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// Nested messages of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    /// One dimension: a fixed size or a symbolic name.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        /// The size or name.
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
    }

    /// The oneof of [`Dimension`].
    pub mod dimension {
        /// A fixed size or a symbolic name.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            /// Fixed size.
            #[prost(int64, tag = "1")]
            DimValue(i64),
            /// Symbolic name, e.g. `batch`.
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

/// Field numbers of `onnx.proto`, by message, for code that reads the wire format directly.
pub mod field {
    /// `ModelProto.graph`.
    pub const MODEL_GRAPH: u32 = 7;
    /// `GraphProto.node`.
    pub const GRAPH_NODE: u32 = 1;
    /// `GraphProto.initializer`.
    pub const GRAPH_INITIALIZER: u32 = 5;
    /// `GraphProto.input`.
    pub const GRAPH_INPUT: u32 = 11;
    /// `GraphProto.output`.
    pub const GRAPH_OUTPUT: u32 = 12;
    /// `NodeProto.input`.
    pub const NODE_INPUT: u32 = 1;
    /// `NodeProto.output`.
    pub const NODE_OUTPUT: u32 = 2;
    /// `NodeProto.attribute`.
    pub const NODE_ATTRIBUTE: u32 = 5;
    /// `AttributeProto.g`, a subgraph (not in the messages above: the exporter writes none).
    pub const ATTRIBUTE_GRAPH: u32 = 6;
    /// `AttributeProto.graphs` (not in the messages above).
    pub const ATTRIBUTE_GRAPHS: u32 = 11;
    /// `TensorProto.name`.
    pub const TENSOR_NAME: u32 = 8;
    /// `TensorProto.external_data` (not in the messages above: weights are written inline).
    pub const TENSOR_EXTERNAL_DATA: u32 = 13;
    /// `TensorProto.data_location` (not in the messages above).
    pub const TENSOR_DATA_LOCATION: u32 = 14;
    /// `ValueInfoProto.name`.
    pub const VALUE_INFO_NAME: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The field number of the first key of an encoded message with a single field set.
    fn only_field(bytes: &[u8]) -> u32 {
        let mut key = 0u64;
        for (i, byte) in bytes.iter().enumerate() {
            key |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return u32::try_from(key >> 3).unwrap();
            }
        }
        panic!("no complete key in {bytes:?}")
    }

    #[test]
    fn the_wire_field_numbers_are_the_messages_own() {
        let name = || Some("x".to_string());
        let graph = ModelProto { graph: Some(GraphProto::default()), ..Default::default() };
        assert_eq!(only_field(&graph.encode_to_vec()), field::MODEL_GRAPH);
        let cases = [
            (
                GraphProto { node: vec![NodeProto::default()], ..Default::default() }.encode_to_vec(),
                field::GRAPH_NODE,
            ),
            (
                GraphProto { initializer: vec![TensorProto::default()], ..Default::default() }
                    .encode_to_vec(),
                field::GRAPH_INITIALIZER,
            ),
            (
                GraphProto { input: vec![ValueInfoProto::default()], ..Default::default() }.encode_to_vec(),
                field::GRAPH_INPUT,
            ),
            (
                GraphProto { output: vec![ValueInfoProto::default()], ..Default::default() }.encode_to_vec(),
                field::GRAPH_OUTPUT,
            ),
            (NodeProto { input: vec!["x".into()], ..Default::default() }.encode_to_vec(), field::NODE_INPUT),
            (
                NodeProto { output: vec!["x".into()], ..Default::default() }.encode_to_vec(),
                field::NODE_OUTPUT,
            ),
            (
                NodeProto { attribute: vec![AttributeProto::default()], ..Default::default() }
                    .encode_to_vec(),
                field::NODE_ATTRIBUTE,
            ),
            (TensorProto { name: name(), ..Default::default() }.encode_to_vec(), field::TENSOR_NAME),
            (ValueInfoProto { name: name(), ..Default::default() }.encode_to_vec(), field::VALUE_INFO_NAME),
        ];
        for (bytes, number) in cases {
            assert_eq!(only_field(&bytes), number, "{bytes:?}");
        }
    }
}
