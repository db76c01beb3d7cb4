//! Cuts an ONNX model down to the nodes one output needs, before ONNX Runtime sees it.
//!
//! ONNX Runtime runs every node of a graph whatever outputs a run asks for: asking the shipped
//! model for `embedding` alone still runs its fc and Y layers, a quarter of its time. So the
//! session is built from a pruned copy instead. The pruning works on the protobuf wire format:
//! it reads only the fields it needs (node inputs and outputs, initializer and output names) and
//! copies every other field byte for byte, so a model written by any tool keeps everything the
//! chosen output depends on, fields this module has never heard of included. A graph with
//! subgraphs (`If`, `Loop`, `Scan` attributes), whose inner nodes can read outer values by name,
//! and a model with external weight files are left whole.

use std::collections::HashSet;

use dim_models::onnx_schema::field::{
    ATTRIBUTE_GRAPH, ATTRIBUTE_GRAPHS, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_NODE, GRAPH_OUTPUT, MODEL_GRAPH,
    NODE_ATTRIBUTE, NODE_INPUT, NODE_OUTPUT, TENSOR_DATA_LOCATION, TENSOR_EXTERNAL_DATA, TENSOR_NAME,
    VALUE_INFO_NAME,
};

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LENGTH_DELIMITED: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// Why a model was left whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PruningError {
    /// The bytes are not a protobuf message this module can walk.
    #[error("not a readable ONNX protobuf: {0}")]
    Malformed(&'static str),
    /// The graph has no output of that name.
    #[error("the graph has no output named `{0}`")]
    NoSuchOutput(String),
    /// A node carries a subgraph, which may use outer values by name.
    #[error("the graph has subgraphs")]
    HasSubgraphs,
    /// Weights live in files beside the model, found relative to its path, which a model loaded
    /// from memory does not have.
    #[error("the model keeps weights in external files")]
    ExternalData,
}

/// What pruning kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunedModel {
    /// The serialised model with only `output` and the nodes and initializers it needs.
    pub bytes: Vec<u8>,
    /// Nodes kept, and nodes in the original graph.
    pub nodes_kept: usize,
    /// Nodes in the original graph.
    pub nodes_total: usize,
}

/// One field of a message: its number, wire type, and where its value lies in the message.
#[derive(Debug, Clone, Copy)]
struct Field {
    number: u32,
    wire_type: u8,
    /// The whole field, key included.
    whole: (usize, usize),
    /// The payload of a length-delimited field (empty otherwise).
    payload: (usize, usize),
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, PruningError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or(PruningError::Malformed("truncated varint"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(PruningError::Malformed("varint longer than 10 bytes"))
}

/// The fields of one message, in order.
fn fields(bytes: &[u8]) -> Result<Vec<Field>, PruningError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let key = read_varint(bytes, &mut at)?;
        let number = u32::try_from(key >> 3).map_err(|_| PruningError::Malformed("field number"))?;
        let wire_type = (key & 7) as u8;
        let mut payload = (at, at);
        match wire_type {
            WIRE_VARINT => {
                read_varint(bytes, &mut at)?;
            }
            WIRE_FIXED64 => at += 8,
            WIRE_FIXED32 => at += 4,
            WIRE_LENGTH_DELIMITED => {
                let len = usize::try_from(read_varint(bytes, &mut at)?)
                    .map_err(|_| PruningError::Malformed("length"))?;
                payload = (at, at.checked_add(len).ok_or(PruningError::Malformed("length"))?);
                at = payload.1;
            }
            _ => return Err(PruningError::Malformed("group or unknown wire type")),
        }
        if at > bytes.len() {
            return Err(PruningError::Malformed("field runs past the end"));
        }
        out.push(Field { number, wire_type, whole: (start, at), payload });
    }
    Ok(out)
}

fn payload<'a>(bytes: &'a [u8], field: &Field) -> &'a [u8] {
    &bytes[field.payload.0..field.payload.1]
}

/// The string fields numbered `number` of a message.
fn strings(message: &[u8], number: u32) -> Result<Vec<String>, PruningError> {
    fields(message)?
        .iter()
        .filter(|f| f.number == number && f.wire_type == WIRE_LENGTH_DELIMITED)
        .map(|f| {
            String::from_utf8(payload(message, f).to_vec())
                .map_err(|_| PruningError::Malformed("a name is not UTF-8"))
        })
        .collect()
}

/// The first string field numbered `number`, or "".
fn name(message: &[u8], number: u32) -> Result<String, PruningError> {
    Ok(strings(message, number)?.into_iter().next().unwrap_or_default())
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn write_length_delimited(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    write_varint(out, (u64::from(number) << 3) | u64::from(WIRE_LENGTH_DELIMITED));
    write_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

struct Node {
    inputs: Vec<String>,
    outputs: Vec<String>,
}

fn read_node(node: &[u8]) -> Result<Node, PruningError> {
    for attribute in fields(node)?.iter().filter(|f| f.number == NODE_ATTRIBUTE) {
        let attribute = payload(node, attribute);
        if fields(attribute)?.iter().any(|f| f.number == ATTRIBUTE_GRAPH || f.number == ATTRIBUTE_GRAPHS) {
            return Err(PruningError::HasSubgraphs);
        }
    }
    Ok(Node { inputs: strings(node, NODE_INPUT)?, outputs: strings(node, NODE_OUTPUT)? })
}

/// The graph with only `output`, the nodes it needs (ONNX keeps nodes in topological order, so
/// one backward pass finds them) and the initializers those nodes read.
fn prune_graph(graph: &[u8], output: &str) -> Result<(Vec<u8>, usize, usize), PruningError> {
    let graph_fields = fields(graph)?;
    let mut output_found = false;
    for field in graph_fields.iter().filter(|f| f.number == GRAPH_OUTPUT) {
        output_found |= name(payload(graph, field), VALUE_INFO_NAME)? == output;
    }
    if !output_found {
        return Err(PruningError::NoSuchOutput(output.to_string()));
    }
    let node_fields: Vec<&Field> = graph_fields.iter().filter(|f| f.number == GRAPH_NODE).collect();
    let nodes = node_fields.iter().map(|f| read_node(payload(graph, f))).collect::<Result<Vec<_>, _>>()?;
    let mut needed: HashSet<&str> = HashSet::from([output]);
    let mut keep = vec![false; nodes.len()];
    for (index, node) in nodes.iter().enumerate().rev() {
        if node.outputs.iter().any(|o| needed.contains(o.as_str())) {
            keep[index] = true;
            needed.extend(node.inputs.iter().map(String::as_str).filter(|i| !i.is_empty()));
        }
    }
    let mut dropped_initializers = HashSet::new();
    let mut out = Vec::with_capacity(graph.len());
    let mut node_index = 0;
    for field in &graph_fields {
        let value = payload(graph, field);
        let kept = match field.number {
            GRAPH_NODE => {
                node_index += 1;
                keep[node_index - 1]
            }
            GRAPH_OUTPUT => name(value, VALUE_INFO_NAME)? == output,
            GRAPH_INITIALIZER => {
                if fields(value)?
                    .iter()
                    .any(|f| f.number == TENSOR_EXTERNAL_DATA || f.number == TENSOR_DATA_LOCATION)
                {
                    return Err(PruningError::ExternalData);
                }
                let initializer = name(value, TENSOR_NAME)?;
                let used = needed.contains(initializer.as_str());
                if !used {
                    dropped_initializers.insert(initializer);
                }
                used
            }
            _ => true,
        };
        if kept {
            out.extend_from_slice(&graph[field.whole.0..field.whole.1]);
        }
    }
    // Models of IR version 3 list initializers among the inputs too; drop those of the dropped
    // initializers (a second pass, since inputs may come before initializers).
    if !dropped_initializers.is_empty() {
        let pruned = out;
        out = Vec::with_capacity(pruned.len());
        for field in fields(&pruned)? {
            let dropped = field.number == GRAPH_INPUT
                && dropped_initializers.contains(&name(payload(&pruned, &field), VALUE_INFO_NAME)?);
            if !dropped {
                out.extend_from_slice(&pruned[field.whole.0..field.whole.1]);
            }
        }
    }
    let kept = keep.iter().filter(|k| **k).count();
    Ok((out, kept, nodes.len()))
}

/// The serialised ONNX `model` cut down to `output` and what it depends on.
pub fn prune_to_output(model: &[u8], output: &str) -> Result<PrunedModel, PruningError> {
    let model_fields = fields(model)?;
    let mut bytes = Vec::with_capacity(model.len());
    let mut counts = None;
    for field in &model_fields {
        if field.number == MODEL_GRAPH && field.wire_type == WIRE_LENGTH_DELIMITED {
            if counts.is_some() {
                return Err(PruningError::Malformed("two graphs"));
            }
            let (graph, kept, total) = prune_graph(payload(model, field), output)?;
            write_length_delimited(&mut bytes, MODEL_GRAPH, &graph);
            counts = Some((kept, total));
        } else {
            bytes.extend_from_slice(&model[field.whole.0..field.whole.1]);
        }
    }
    let (nodes_kept, nodes_total) = counts.ok_or(PruningError::Malformed("no graph"))?;
    Ok(PrunedModel { bytes, nodes_kept, nodes_total })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_field(out: &mut Vec<u8>, number: u32, value: &str) {
        write_length_delimited(out, number, value.as_bytes());
    }

    fn node(inputs: &[&str], outputs: &[&str]) -> Vec<u8> {
        let mut node = Vec::new();
        for input in inputs {
            string_field(&mut node, NODE_INPUT, input);
        }
        for output in outputs {
            string_field(&mut node, NODE_OUTPUT, output);
        }
        // op_type (field 4), a field the pruning never reads.
        string_field(&mut node, 4, "Op");
        node
    }

    fn named(number: u32, value: &str) -> Vec<u8> {
        let mut message = Vec::new();
        string_field(&mut message, number, value);
        message
    }

    /// x -> a -> b (output "b"), a -> c (output "c"); weights w_b and w_c; plus a varint field
    /// and an unknown field in the graph, and a model-level field, to be carried over.
    fn model() -> Vec<u8> {
        let mut graph = Vec::new();
        write_length_delimited(&mut graph, GRAPH_NODE, &node(&["x"], &["a"]));
        write_length_delimited(&mut graph, GRAPH_NODE, &node(&["a", "w_b", ""], &["b"]));
        write_length_delimited(&mut graph, GRAPH_NODE, &node(&["a", "w_c"], &["c"]));
        write_length_delimited(&mut graph, GRAPH_INITIALIZER, &named(TENSOR_NAME, "w_b"));
        write_length_delimited(&mut graph, GRAPH_INITIALIZER, &named(TENSOR_NAME, "w_c"));
        write_length_delimited(&mut graph, GRAPH_INPUT, &named(VALUE_INFO_NAME, "x"));
        write_length_delimited(&mut graph, GRAPH_INPUT, &named(VALUE_INFO_NAME, "w_c"));
        write_length_delimited(&mut graph, GRAPH_OUTPUT, &named(VALUE_INFO_NAME, "b"));
        write_length_delimited(&mut graph, GRAPH_OUTPUT, &named(VALUE_INFO_NAME, "c"));
        write_length_delimited(&mut graph, 99, b"unknown to this module");
        let mut model = Vec::new();
        write_varint(&mut model, 1 << 3); // ir_version (field 1, varint) = 8
        write_varint(&mut model, 8);
        write_length_delimited(&mut model, MODEL_GRAPH, &graph);
        string_field(&mut model, 2, "producer");
        model
    }

    fn graph_of(model: &[u8]) -> Vec<u8> {
        let fields = fields(model).unwrap();
        let graph = fields.iter().find(|f| f.number == MODEL_GRAPH).unwrap();
        payload(model, graph).to_vec()
    }

    fn names(graph: &[u8], number: u32, name_field: u32) -> Vec<String> {
        fields(graph)
            .unwrap()
            .iter()
            .filter(|f| f.number == number)
            .map(|f| name(payload(graph, f), name_field).unwrap())
            .collect()
    }

    #[test]
    fn pruning_keeps_the_chain_to_the_output_and_drops_the_rest() {
        let pruned = prune_to_output(&model(), "b").unwrap();
        assert_eq!((pruned.nodes_kept, pruned.nodes_total), (2, 3));
        let graph = graph_of(&pruned.bytes);
        let node_outputs: Vec<Vec<String>> = fields(&graph)
            .unwrap()
            .iter()
            .filter(|f| f.number == GRAPH_NODE)
            .map(|f| strings(payload(&graph, f), NODE_OUTPUT).unwrap())
            .collect();
        assert_eq!(node_outputs, vec![vec!["a".to_string()], vec!["b".to_string()]]);
        assert_eq!(names(&graph, GRAPH_OUTPUT, VALUE_INFO_NAME), ["b"]);
        assert_eq!(names(&graph, GRAPH_INITIALIZER, TENSOR_NAME), ["w_b"]);
        assert_eq!(names(&graph, GRAPH_INPUT, VALUE_INFO_NAME), ["x"]);
        // Fields it does not know are carried over byte for byte, in the graph and the model.
        let unknown = fields(&graph).unwrap().into_iter().find(|f| f.number == 99).unwrap();
        assert_eq!(payload(&graph, &unknown), b"unknown to this module");
        let model_fields = fields(&pruned.bytes).unwrap();
        assert_eq!(model_fields.iter().map(|f| f.number).collect::<Vec<_>>(), [1, MODEL_GRAPH, 2]);
        assert_eq!(name(&pruned.bytes, 2).unwrap(), "producer");
    }

    #[test]
    fn pruning_to_the_other_output_keeps_its_own_branch() {
        let pruned = prune_to_output(&model(), "c").unwrap();
        let graph = graph_of(&pruned.bytes);
        assert_eq!((pruned.nodes_kept, pruned.nodes_total), (2, 3));
        assert_eq!(names(&graph, GRAPH_INITIALIZER, TENSOR_NAME), ["w_c"]);
        assert_eq!(names(&graph, GRAPH_INPUT, VALUE_INFO_NAME), ["x", "w_c"]);
    }

    #[test]
    fn an_unknown_output_a_subgraph_or_bad_bytes_leave_the_model_whole() {
        assert_eq!(prune_to_output(&model(), "d"), Err(PruningError::NoSuchOutput("d".into())));
        let mut attribute = Vec::new();
        write_length_delimited(&mut attribute, ATTRIBUTE_GRAPH, b"");
        let mut if_node = node(&["x"], &["b"]);
        write_length_delimited(&mut if_node, NODE_ATTRIBUTE, &attribute);
        let mut graph = Vec::new();
        write_length_delimited(&mut graph, GRAPH_NODE, &if_node);
        write_length_delimited(&mut graph, GRAPH_OUTPUT, &named(VALUE_INFO_NAME, "b"));
        let mut with_subgraph = Vec::new();
        write_length_delimited(&mut with_subgraph, MODEL_GRAPH, &graph);
        assert_eq!(prune_to_output(&with_subgraph, "b"), Err(PruningError::HasSubgraphs));
        let mut truncated = model();
        truncated.truncate(truncated.len() - 3);
        assert!(matches!(prune_to_output(&truncated, "b"), Err(PruningError::Malformed(_))));
        assert!(matches!(prune_to_output(b"", "b"), Err(PruningError::Malformed("no graph"))));
        let mut external = named(TENSOR_NAME, "w_b");
        write_length_delimited(&mut external, TENSOR_EXTERNAL_DATA, &named(1, "location"));
        let mut graph = Vec::new();
        write_length_delimited(&mut graph, GRAPH_NODE, &node(&["x", "w_b"], &["b"]));
        write_length_delimited(&mut graph, GRAPH_INITIALIZER, &external);
        write_length_delimited(&mut graph, GRAPH_OUTPUT, &named(VALUE_INFO_NAME, "b"));
        let mut with_external_weights = Vec::new();
        write_length_delimited(&mut with_external_weights, MODEL_GRAPH, &graph);
        assert_eq!(prune_to_output(&with_external_weights, "b"), Err(PruningError::ExternalData));
    }
}
