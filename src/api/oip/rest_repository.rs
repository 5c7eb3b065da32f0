//! oip::rest_repository: Triton's model-repository and statistics calls in their REST form
//! (`GET /v2/models/{m}/config`, `GET /v2/models[/{m}]/stats`, `POST /v2/repository/index`),
//! as JSON shaped like Triton's, made from the same messages the gRPC calls answer with.

use serde_json::{json, Value};

use crate::inference::{DataType, InferStatistics, ModelConfigResponse, ModelStatistics, ModelStatisticsResponse, RepositoryIndexResponse, StatisticDuration};

fn data_type(code: i32) -> &'static str {
    DataType::try_from(code).unwrap_or(DataType::TypeInvalid).as_str_name()
}

pub fn model_config(resp: ModelConfigResponse) -> Value {
    let c = resp.config.unwrap_or_default();
    let tensors = |list: Vec<(String, i32, Vec<i64>)>| {
        list.into_iter().map(|(name, t, dims)| json!({"name": name, "data_type": data_type(t), "dims": dims})).collect::<Vec<_>>()
    };
    json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": tensors(c.input.into_iter().map(|t| (t.name, t.data_type, t.dims)).collect()),
        "output": tensors(c.output.into_iter().map(|t| (t.name, t.data_type, t.dims)).collect()),
    })
}

fn duration(d: Option<StatisticDuration>) -> Value {
    let d = d.unwrap_or_default();
    json!({"count": d.count, "ns": d.ns})
}

fn inference_stats(s: InferStatistics) -> Value {
    json!({
        "success": duration(s.success),
        "fail": duration(s.fail),
        "queue": duration(s.queue),
        "compute_input": duration(s.compute_input),
        "compute_infer": duration(s.compute_infer),
        "compute_output": duration(s.compute_output),
        "cache_hit": duration(s.cache_hit),
        "cache_miss": duration(s.cache_miss),
    })
}

fn model_stats(m: ModelStatistics) -> Value {
    let batches: Vec<Value> = m
        .batch_stats
        .into_iter()
        .map(|b| json!({"batch_size": b.batch_size, "compute_input": duration(b.compute_input), "compute_infer": duration(b.compute_infer), "compute_output": duration(b.compute_output)}))
        .collect();
    json!({
        "name": m.name,
        "version": m.version,
        "last_inference": m.last_inference,
        "inference_count": m.inference_count,
        "execution_count": m.execution_count,
        "inference_stats": inference_stats(m.inference_stats.unwrap_or_default()),
        "batch_stats": batches,
    })
}

pub fn model_statistics(resp: ModelStatisticsResponse) -> Value {
    json!({"model_stats": resp.model_stats.into_iter().map(model_stats).collect::<Vec<_>>()})
}

/// Triton answers the index as a bare array.
pub fn repository_index(resp: RepositoryIndexResponse) -> Value {
    Value::Array(resp.models.into_iter().map(|m| json!({"name": m.name, "version": m.version, "state": m.state, "reason": m.reason})).collect())
}
