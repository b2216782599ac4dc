//! The value envelope: `mdcache::codec` encode + decode of a `Price` against bare rmp-serde.
//!
//! Floor: `rmp_serde::to_vec_named` + `rmp_serde::from_slice` of the same `Price` (the same
//! MessagePack, without the 18-byte header). Also, as references for where the time goes:
//! encode and decode alone, DESIGN §9's "encoding into a reused buffer", and the envelope
//! written into a buffer presized for a whole `Price` (ours starts at 64 bytes).

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::price;
use criterion::{Criterion, criterion_group, criterion_main};
use mdcache::Price;
use mdcache::codec::{self, DEFAULT_MAX_VALUE_BYTES, FORMAT, MAGIC};

/// The same bytes as `codec::encode`, into a buffer with room for the whole value.
fn encode_presized(version: u64, value: &Price) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    buf.push(MAGIC);
    buf.push(FORMAT);
    buf.extend_from_slice(&version.to_be_bytes());
    buf.extend_from_slice(&0u64.to_be_bytes()); // written TTL: not recorded
    rmp_serde::encode::write_named(&mut buf, value).expect("encode");
    buf
}

fn bench_codec(c: &mut Criterion) {
    let px = price(42);
    let envelope = codec::encode(42, &px, DEFAULT_MAX_VALUE_BYTES).expect("encode");
    let plain = rmp_serde::to_vec_named(&px).expect("encode");
    assert_eq!(&envelope[codec::HEADER_LEN..], &plain[..]);
    assert_eq!(encode_presized(42, &px), envelope);
    println!(
        "codec: Price is {} bytes as an envelope, {} as plain MessagePack",
        envelope.len(),
        plain.len()
    );

    let mut group = c.benchmark_group("codec");
    group.bench_function("mdcache_encode_decode", |b| {
        b.iter(|| {
            let bytes = codec::encode(42, black_box(&px), DEFAULT_MAX_VALUE_BYTES).unwrap();
            codec::decode::<Price>(black_box(&bytes)).unwrap()
        })
    });
    group.bench_function("rmp_serde_encode_decode", |b| {
        b.iter(|| {
            let bytes = rmp_serde::to_vec_named(black_box(&px)).unwrap();
            rmp_serde::from_slice::<Price>(black_box(&bytes)).unwrap()
        })
    });
    group.bench_function("mdcache_encode", |b| {
        b.iter(|| codec::encode(42, black_box(&px), DEFAULT_MAX_VALUE_BYTES).unwrap())
    });
    group.bench_function("rmp_serde_to_vec_named", |b| {
        b.iter(|| rmp_serde::to_vec_named(black_box(&px)).unwrap())
    });
    group.bench_function("envelope_presized_encode", |b| {
        b.iter(|| encode_presized(42, black_box(&px)))
    });
    group.bench_function("rmp_serde_write_named_reused_buf", |b| {
        let mut buf = Vec::with_capacity(256);
        b.iter(|| {
            buf.clear();
            rmp_serde::encode::write_named(&mut buf, black_box(&px)).unwrap();
            buf.len()
        })
    });
    group.bench_function("mdcache_decode", |b| {
        b.iter(|| codec::decode::<Price>(black_box(&envelope)).unwrap())
    });
    group.bench_function("rmp_serde_from_slice", |b| {
        b.iter(|| rmp_serde::from_slice::<Price>(black_box(&plain)).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion(Duration::from_secs(3), 50);
    targets = bench_codec
}
criterion_main!(benches);
