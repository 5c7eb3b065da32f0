//! oip::rest_convert: KServe V2 REST bodies to and from the Open Inference Protocol's protobuf
//! messages, so that REST calls run through the very same service as gRPC ones.
//!
//! A request body is JSON, or JSON followed by binary tensor data (the binary-data
//! extension of Triton and KServe: header `Inference-Header-Content-Length` gives the
//! JSON's length; an input with `parameters.binary_data_size` takes that many bytes, in
//! input order). Every input goes to the service as raw contents (JSON data re-encoded
//! little-endian), so the answer is raw too; each output comes back as JSON `data` or, when
//! asked for (`parameters.binary_data` on the output, or `binary_data_output` on the
//! request), as binary data after the JSON.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::inference::infer_parameter::ParameterChoice;
use crate::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use crate::inference::{InferParameter, ModelInferRequest, ModelInferResponse};

/// A request body that cannot be read (HTTP 400).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadBody(pub String);

fn bad(message: impl Into<String>) -> BadBody {
    BadBody(message.into())
}

fn parameter(v: &Value) -> Option<InferParameter> {
    let choice = match v {
        Value::Bool(b) => ParameterChoice::BoolParam(*b),
        Value::String(s) => ParameterChoice::StringParam(s.clone()),
        Value::Number(n) if n.is_i64() => ParameterChoice::Int64Param(n.as_i64()?),
        Value::Number(n) if n.is_u64() => ParameterChoice::Uint64Param(n.as_u64()?),
        Value::Number(n) => ParameterChoice::DoubleParam(n.as_f64()?),
        _ => return None,
    };
    Some(InferParameter { parameter_choice: Some(choice) })
}

fn parameters(v: Option<&Value>) -> HashMap<String, InferParameter> {
    v.and_then(Value::as_object).map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), parameter(v)?))).collect()).unwrap_or_default()
}

fn parameter_json(p: &InferParameter) -> Value {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => json!(b),
        Some(ParameterChoice::Int64Param(i)) => json!(i),
        Some(ParameterChoice::StringParam(s)) => json!(s),
        Some(ParameterChoice::DoubleParam(d)) => json!(d),
        Some(ParameterChoice::Uint64Param(u)) => json!(u),
        None => Value::Null,
    }
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

/// JSON `data` (nested or flat) as raw little-endian bytes of `datatype`.
fn raw_of_json(name: &str, datatype: &str, data: &Value) -> Result<Vec<u8>, BadBody> {
    let mut items = Vec::new();
    flatten(data, &mut items);
    let num = |v: &Value| v.as_f64().ok_or_else(|| bad(format!("input {name}: {datatype} data must be numbers")));
    let mut out = Vec::new();
    for v in items {
        match datatype {
            "FP32" => out.extend((num(v)? as f32).to_le_bytes()),
            "FP64" => out.extend(num(v)?.to_le_bytes()),
            "UINT8" => out.push(num(v)? as u8),
            "INT32" => out.extend((num(v)? as i32).to_le_bytes()),
            "INT64" => out.extend((num(v)? as i64).to_le_bytes()),
            "BYTES" => {
                let s = v.as_str().ok_or_else(|| bad(format!("input {name}: BYTES data must be strings (or binary data)")))?;
                out.extend((s.len() as u32).to_le_bytes());
                out.extend(s.as_bytes());
            }
            other => return Err(bad(format!("input {name}: datatype {other} is not supported in JSON data"))),
        }
    }
    Ok(out)
}

/// The JSON header of an infer body and its binary part, split by `header_len` (None: all JSON).
pub fn split_body(body: &[u8], header_len: Option<usize>) -> Result<(Value, &[u8]), BadBody> {
    let n = header_len.unwrap_or(body.len());
    if n > body.len() {
        return Err(bad(format!("Inference-Header-Content-Length {n} is longer than the body ({} bytes)", body.len())));
    }
    let json = serde_json::from_slice(&body[..n]).map_err(|e| bad(format!("the request is not JSON: {e}")))?;
    Ok((json, &body[n..]))
}

/// The OIP request of a REST infer call for `model` (`version` may be empty), and which
/// outputs the caller wants as binary data (None = all of them).
pub fn infer_request(model: &str, version: &str, json: &Value, mut binary: &[u8]) -> Result<(ModelInferRequest, BinaryOutputs), BadBody> {
    let inputs = json.get("inputs").and_then(Value::as_array).ok_or_else(|| bad("the request has no \"inputs\" array"))?;
    let mut req = ModelInferRequest {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id: json.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
        parameters: parameters(json.get("parameters")),
        ..Default::default()
    };
    req.parameters.remove("binary_data_output");
    for input in inputs {
        let name = input.get("name").and_then(Value::as_str).ok_or_else(|| bad("an input has no \"name\""))?;
        let datatype = input.get("datatype").and_then(Value::as_str).ok_or_else(|| bad(format!("input {name} has no \"datatype\"")))?;
        let shape: Vec<i64> = input
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("input {name} has no \"shape\"")))?
            .iter()
            .map(|d| d.as_i64().ok_or_else(|| bad(format!("input {name}: shape must be integers"))))
            .collect::<Result<_, _>>()?;
        let mut params = parameters(input.get("parameters"));
        let raw = match params.remove("binary_data_size").and_then(|p| p.parameter_choice) {
            Some(ParameterChoice::Int64Param(n)) if n >= 0 => take(&mut binary, n as usize, name)?,
            Some(ParameterChoice::Uint64Param(n)) => take(&mut binary, n as usize, name)?,
            Some(_) => return Err(bad(format!("input {name}: binary_data_size must be a byte count"))),
            None => raw_of_json(name, datatype, input.get("data").ok_or_else(|| bad(format!("input {name} has neither \"data\" nor binary_data_size")))?)?,
        };
        req.inputs.push(InferInputTensor { name: name.to_string(), datatype: datatype.to_string(), shape, parameters: params, contents: None });
        req.raw_input_contents.push(raw);
    }
    if !binary.is_empty() {
        return Err(bad(format!("{} bytes of binary data were not claimed by any input's binary_data_size", binary.len())));
    }
    let all_binary = json.pointer("/parameters/binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let mut wanted = Vec::new();
    for o in json.get("outputs").and_then(Value::as_array).into_iter().flatten() {
        let name = o.get("name").and_then(Value::as_str).ok_or_else(|| bad("an output has no \"name\""))?;
        let mut params = parameters(o.get("parameters"));
        let as_binary = matches!(params.remove("binary_data").and_then(|p| p.parameter_choice), Some(ParameterChoice::BoolParam(true)));
        params.remove("classification");
        wanted.push((name.to_string(), as_binary || all_binary));
        req.outputs.push(InferRequestedOutputTensor { name: name.to_string(), parameters: params });
    }
    let binary_outputs = if wanted.is_empty() { BinaryOutputs::All(all_binary) } else { BinaryOutputs::Named(wanted) };
    Ok((req, binary_outputs))
}

fn take(binary: &mut &[u8], n: usize, name: &str) -> Result<Vec<u8>, BadBody> {
    if n > binary.len() {
        return Err(bad(format!("input {name}: binary_data_size {n} is more than the {} bytes left", binary.len())));
    }
    let (head, rest) = binary.split_at(n);
    *binary = rest;
    Ok(head.to_vec())
}

/// Which outputs go back as binary data.
#[derive(Debug)]
pub enum BinaryOutputs {
    /// No output named: all of them as binary (true) or JSON (false).
    All(bool),
    /// Named outputs, each with its choice.
    Named(Vec<(String, bool)>),
}

impl BinaryOutputs {
    fn wants(&self, name: &str) -> bool {
        match self {
            BinaryOutputs::All(b) => *b,
            BinaryOutputs::Named(list) => list.iter().any(|(n, b)| n == name && *b),
        }
    }
}

/// Raw little-endian output bytes as JSON data of `datatype`.
fn json_of_raw(datatype: &str, raw: &[u8]) -> Value {
    match datatype {
        "FP32" => json!(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>()),
        "INT64" => json!(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect::<Vec<_>>()),
        "UINT8" => json!(raw),
        "BYTES" => {
            let (mut out, mut rest) = (Vec::new(), raw);
            while rest.len() >= 4 {
                let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let end = (4 + n).min(rest.len());
                out.push(String::from_utf8_lossy(&rest[4..end]).into_owned());
                rest = &rest[end..];
            }
            json!(out)
        }
        _ => Value::Null,
    }
}

/// The REST answer of an OIP response: the JSON, and the binary data that follows it
/// (empty when every output went as JSON).
pub fn infer_response(resp: &ModelInferResponse, binary: &BinaryOutputs) -> (Value, Vec<u8>) {
    let mut tail = Vec::new();
    let outputs: Vec<Value> = resp
        .outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let raw = resp.raw_output_contents.get(i).map(Vec::as_slice).unwrap_or_default();
            let mut params: Map<String, Value> = o.parameters.iter().map(|(k, v)| (k.clone(), parameter_json(v))).collect();
            let mut out = json!({"name": o.name, "datatype": o.datatype, "shape": o.shape});
            if binary.wants(&o.name) {
                params.insert("binary_data_size".into(), json!(raw.len()));
                tail.extend_from_slice(raw);
            } else {
                out["data"] = json_of_raw(&o.datatype, raw);
            }
            if !params.is_empty() {
                out["parameters"] = Value::Object(params);
            }
            out
        })
        .collect();
    let mut body = json!({"model_name": resp.model_name, "model_version": resp.model_version, "outputs": outputs});
    if !resp.id.is_empty() {
        body["id"] = json!(resp.id);
    }
    if !resp.parameters.is_empty() {
        body["parameters"] = Value::Object(resp.parameters.iter().map(|(k, v)| (k.clone(), parameter_json(v))).collect());
    }
    (body, tail)
}
