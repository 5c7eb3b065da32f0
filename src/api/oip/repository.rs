//! oip::repository: Triton's model-repository and statistics calls answered from the served
//! models: ModelConfig (the model as Triton would describe an ONNX model of the same
//! shape), ModelStatistics (the pipeline's own counts and durations, engine/stats.rs) and
//! RepositoryIndex. perf_analyzer and model navigators call them before they load a model.

use crate::bundle::Bundle;
use crate::engine::stats::Tally;
use crate::inference::repository_index_response::ModelIndex;
use crate::inference::{
    DataType, InferBatchStatistics, InferStatistics, ModelConfig, ModelInput, ModelOutput, ModelStatistics, RepositoryIndexResponse, StatisticDuration,
};
use crate::registry::{Registry, ServedModel};

fn data_type(oip: &str) -> DataType {
    match oip {
        "FP32" => DataType::TypeFp32,
        "BYTES" => DataType::TypeString,
        "UINT8" => DataType::TypeUint8,
        _ => DataType::TypeInvalid,
    }
}

/// Dims without the batch dimension (Triton's convention when max_batch_size > 0); a
/// per-item scalar is [1].
fn item_dims(shape: &[i64]) -> Vec<i64> {
    let dims = shape.get(1..).unwrap_or_default().to_vec();
    if dims.is_empty() {
        vec![1]
    } else {
        dims
    }
}

/// The model's configuration, from the same description as ModelMetadata.
pub fn model_config(bundle: &Bundle) -> ModelConfig {
    let meta = super::convert::model_metadata(bundle);
    ModelConfig {
        name: meta.name,
        platform: meta.platform,
        backend: "onnxruntime".into(),
        max_batch_size: bundle.manifest.max_batch as i32,
        input: meta.inputs.iter().map(|t| ModelInput { name: t.name.clone(), data_type: data_type(&t.datatype) as i32, dims: item_dims(&t.shape) }).collect(),
        output: meta
            .outputs
            .iter()
            .map(|t| ModelOutput { name: t.name.clone(), data_type: data_type(&t.datatype) as i32, dims: item_dims(&t.shape) })
            .collect(),
    }
}

fn duration(t: &Tally) -> Option<StatisticDuration> {
    let (count, ns) = t.read();
    Some(StatisticDuration { count, ns })
}

pub fn model_statistics(model: &ServedModel) -> ModelStatistics {
    let s = &model.stats;
    let batch_stats = s
        .batches()
        .into_iter()
        .map(|(size, count, ns)| InferBatchStatistics {
            batch_size: size,
            compute_infer: Some(StatisticDuration { count, ns }),
            compute_input: Some(StatisticDuration::default()),
            compute_output: Some(StatisticDuration::default()),
        })
        .collect();
    ModelStatistics {
        name: model.name().to_string(),
        version: model.bundle.manifest.version.clone(),
        last_inference: s.last_inference_ms(),
        inference_count: s.success.read().0,
        execution_count: s.executions(),
        inference_stats: Some(InferStatistics {
            success: duration(&s.success),
            fail: duration(&s.fail),
            queue: duration(&s.queue),
            compute_input: duration(&s.compute_input),
            compute_infer: duration(&s.compute_infer),
            compute_output: duration(&s.compute_output),
            cache_hit: Some(StatisticDuration::default()),
            cache_miss: Some(StatisticDuration::default()),
        }),
        batch_stats,
    }
}

/// The served models `visible` lets the caller see; `ready_only` keeps the ready ones.
pub fn repository_index(registry: &Registry, ready_only: bool, visible: impl Fn(&str) -> bool) -> RepositoryIndexResponse {
    let models = registry
        .models()
        .filter(|m| visible(m.name()) && (!ready_only || m.is_ready()))
        .map(|m| ModelIndex {
            name: m.name().to_string(),
            version: m.bundle.manifest.version.clone(),
            state: if m.is_ready() { "READY" } else { "UNAVAILABLE" }.into(),
            reason: if m.is_ready() { String::new() } else { "warming up".into() },
        })
        .collect();
    RepositoryIndexResponse { models }
}
