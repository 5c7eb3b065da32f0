//! Tests of the queue itself: the test plays the worker by reading the batch channel.

use std::time::{Duration, Instant};

use super::*;

fn ok_result(n: usize) -> InferResult {
    InferResult {
        logits: vec![0.0, 1.0],
        features: vec![],
        extra_logits: vec![],
        extra_features: vec![],
        queue_seconds: 0.0,
        infer_seconds: 0.0,
        batch_size: n,
    }
}

#[tokio::test]
async fn burst_is_batched_up_to_max_batch_and_all_answered() {
    let (handle, mut batches) = BatcherHandle::start("m", 64, 4, Duration::ZERO);
    let callers: Vec<_> = (0..10)
        .map(|i| {
            let h = handle.clone();
            tokio::spawn(async move { h.infer(vec![i as f32; 3], None).await })
        })
        .collect();
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let batch = batches.recv().await.unwrap();
        let n = batch.entries.len();
        assert!(n <= 4, "batch of {n} exceeds max_batch 4");
        assert_eq!(batch.input.len(), 3 * n);
        seen.extend(batch.input.chunks(3).map(|c| c[0] as usize));
        sizes.push(n);
        for e in batch.entries {
            e.answer(Ok(ok_result(n)));
        }
    }
    for c in callers {
        assert!(c.await.unwrap().is_ok());
    }
    seen.sort();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert!(sizes.iter().any(|&n| n > 1), "a burst should form at least one multi-item batch: {sizes:?}");
    assert_eq!(handle.in_flight(), 0, "permits are released once answered");
}

#[tokio::test]
async fn a_batch_delay_lets_a_short_batch_fill_up() {
    let (handle, mut batches) = BatcherHandle::start("m", 64, 4, Duration::from_millis(200));
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let h = handle.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                h.infer(vec![i as f32], None).await
            })
        })
        .collect();
    let batch = batches.recv().await.unwrap();
    assert_eq!(batch.entries.len(), 4, "arrivals 10 ms apart join one batch within the 200 ms delay");
    for e in batch.entries {
        e.answer(Ok(ok_result(4)));
    }
    for c in callers {
        c.await.unwrap().unwrap();
    }
    // A lone request still runs once the delay has passed.
    let started = Instant::now();
    let lone = tokio::spawn({
        let h = handle.clone();
        async move { h.infer(vec![9.0], None).await }
    });
    let batch = batches.recv().await.unwrap();
    assert_eq!(batch.entries.len(), 1);
    assert!(started.elapsed() >= Duration::from_millis(150), "waited for company first");
    for e in batch.entries {
        e.answer(Ok(ok_result(1)));
    }
    lone.await.unwrap().unwrap();
}

#[tokio::test]
async fn full_queue_is_refused_immediately() {
    let (handle, _batches) = BatcherHandle::start("m", 2, 1, Duration::ZERO);
    let a = tokio::spawn({
        let h = handle.clone();
        async move { h.infer(vec![0.0], None).await }
    });
    let b = tokio::spawn({
        let h = handle.clone();
        async move { h.infer(vec![0.0], None).await }
    });
    while handle.in_flight() < 2 {
        tokio::task::yield_now().await;
    }
    let err = handle.infer(vec![0.0], None).await.unwrap_err();
    assert!(matches!(err, BatchError::QueueFull { capacity: 2, .. }), "{err:?}");
    a.abort();
    b.abort();
}

#[tokio::test]
async fn callers_that_went_away_are_skipped() {
    let (handle, mut batches) = BatcherHandle::start("m", 8, 8, Duration::ZERO);
    let (running, ahead) = fill_pipeline(&handle, &mut batches).await;
    let gone = tokio::spawn({
        let h = handle.clone();
        async move { h.infer(vec![2.0], None).await }
    });
    while handle.in_flight() < 3 {
        tokio::task::yield_now().await;
    }
    gone.abort();
    let _ = gone.await;
    let stays = tokio::spawn({
        let h = handle.clone();
        async move { h.infer(vec![3.0], None).await }
    });
    drain_pipeline(running, ahead, &mut batches).await;
    let batch = batches.recv().await.unwrap();
    assert_eq!(batch.input, vec![3.0], "the aborted caller's input must not be run");
    for e in batch.entries {
        e.answer(Ok(ok_result(1)));
    }
    stays.await.unwrap().unwrap();
}

#[tokio::test]
async fn expired_deadline_is_answered_without_running() {
    let (handle, mut batches) = BatcherHandle::start("m", 8, 8, Duration::ZERO);
    let (running, ahead) = fill_pipeline(&handle, &mut batches).await;
    let deadline = Instant::now() + Duration::from_millis(20);
    let late = handle.infer(vec![2.0], Some(deadline)).await.unwrap_err();
    assert!(matches!(late, BatchError::DeadlineExceeded { .. }), "{late:?}");
    drain_pipeline(running, ahead, &mut batches).await;
    // The expired entry never reaches a worker: the next batch holds only the new caller.
    let next = tokio::spawn({
        let h = handle.clone();
        async move { h.infer(vec![3.0], None).await }
    });
    let batch = batches.recv().await.unwrap();
    assert_eq!(batch.input, vec![3.0]);
    for e in batch.entries {
        e.answer(Ok(ok_result(1)));
    }
    next.await.unwrap().unwrap();
}

type Caller = tokio::task::JoinHandle<Result<InferResult, BatchError>>;

/// Puts one batch "on the worker" (held by the test) and one prepared ahead in the
/// channel, so that the next requests stay in the queue.
async fn fill_pipeline(handle: &BatcherHandle, batches: &mut tokio::sync::mpsc::Receiver<Batch>) -> ((Caller, Batch), Caller) {
    let first = tokio::spawn({
        let h = handle.clone();
        async move { h.infer(vec![10.0], None).await }
    });
    let running = batches.recv().await.unwrap();
    let ahead = tokio::spawn({
        let h = handle.clone();
        async move { h.infer(vec![11.0], None).await }
    });
    while handle.in_flight() < 2 || handle.waiting.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        tokio::task::yield_now().await;
    }
    ((first, running), ahead)
}

/// Answers the running batch and the one prepared ahead.
async fn drain_pipeline(running: (Caller, Batch), ahead: Caller, batches: &mut tokio::sync::mpsc::Receiver<Batch>) {
    let (first, batch) = running;
    for e in batch.entries {
        e.answer(Ok(ok_result(1)));
    }
    first.await.unwrap().unwrap();
    let batch = batches.recv().await.unwrap();
    assert_eq!(batch.input, vec![11.0], "the batch prepared ahead");
    for e in batch.entries {
        e.answer(Ok(ok_result(1)));
    }
    ahead.await.unwrap().unwrap();
}

#[tokio::test]
async fn multi_row_entries_stay_whole_and_batches_count_rows() {
    // Three callers of 3 rows each (an input + 2 squeezed copies) with max_batch 4: each
    // batch holds whole entries and at most 4 rows, except an entry alone.
    let (handle, mut batches) = BatcherHandle::start("m", 64, 4, Duration::ZERO);
    // Hold the worker slot (batch b0 unanswered) so that all three callers queue before the
    // next batch forms.
    let first = tokio::spawn({
        let h = handle.clone();
        async move { h.infer(vec![-1.0; 2], None).await }
    });
    let b0 = batches.recv().await.unwrap();
    let callers: Vec<_> = (0..3)
        .map(|i| {
            let h = handle.clone();
            tokio::spawn(async move { h.infer_rows(vec![i as f32; 6], 3, None).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for e in b0.entries {
        e.answer(Ok(ok_result(1)));
    }
    first.await.unwrap().unwrap();
    let mut answered = 0;
    while answered < 3 {
        let batch = batches.recv().await.unwrap();
        assert_eq!(batch.rows, batch.entries.iter().map(|e| e.rows).sum::<usize>());
        assert!(batch.rows <= 4 || batch.entries.len() == 1, "{} rows in {} entries", batch.rows, batch.entries.len());
        assert_eq!(batch.input.len(), batch.rows * 2);
        for e in batch.entries {
            assert_eq!(e.rows, 3);
            e.answer(Ok(ok_result(3)));
            answered += 1;
        }
    }
    for c in callers {
        c.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_group_arrives_in_one_batch_in_order_and_is_admitted_whole_or_not_at_all() {
    let (handle, mut batches) = BatcherHandle::start("m", 8, 32, Duration::ZERO);
    let h = handle.clone();
    // Five entries of three rows (an input and its two squeezed copies) each.
    let group: Vec<(Vec<f32>, usize)> = (0..5).map(|i| (vec![i as f32; 6], 3)).collect();
    let caller = tokio::spawn(async move { h.infer_group(group, None).await });
    let batch = batches.recv().await.unwrap();
    assert_eq!((batch.entries.len(), batch.rows), (5, 15), "the whole group in one batch");
    assert_eq!(batch.input.chunks(6).map(|c| c[0] as usize).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert_eq!(handle.in_flight(), 5, "one permit per entry");
    // More entries than the 3 permits left: refused whole, nothing queued.
    let too_many: Vec<(Vec<f32>, usize)> = (0..4).map(|_| (vec![0.0; 2], 1)).collect();
    assert!(matches!(handle.infer_group(too_many, None).await, Err(BatchError::QueueFull { .. })));
    assert_eq!(handle.in_flight(), 5);
    for (i, e) in batch.entries.into_iter().enumerate() {
        e.answer(Ok(ok_result(i)));
    }
    let results = caller.await.unwrap().unwrap();
    assert_eq!(results.iter().map(|r| r.as_ref().unwrap().batch_size).collect::<Vec<_>>(), [0, 1, 2, 3, 4], "answers in the group's order");
    assert_eq!(handle.in_flight(), 0);
}
