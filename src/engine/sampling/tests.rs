use super::*;

fn params(temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        seed,
        ..SamplingParams::default()
    }
}

fn draws(params: &SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
    let mut sampler = Sampler::new(params);
    (0..n).map(|_| sampler.sample(logits)).collect()
}

/// A vocabulary-sized row with a few clear winners and a long noisy tail.
fn big_logits(vocab: usize) -> Vec<f32> {
    (0..vocab)
        .map(|i| match i {
            7 => 9.0,
            150_001 => 8.5,
            42 => 8.0,
            _ => ((i * 7919 % 1000) as f32) / 250.0 - 10.0,
        })
        .collect()
}

#[test]
fn defaults() {
    let p = SamplingParams::default();
    assert_eq!(p.temperature, 0.0);
    assert_eq!(p.max_new_tokens, 256);
    assert!(p.is_greedy());
    assert!(p.validate().is_ok());
    let parsed: SamplingParams = serde_json::from_str(r#"{"temperature": 0.7}"#).unwrap();
    assert_eq!(parsed.temperature, 0.7);
    assert_eq!(parsed.max_new_tokens, 256);
    assert!(serde_json::from_str::<SamplingParams>(r#"{"temp": 0.7}"#).is_err());
}

#[test]
fn greedy_is_argmax_with_lowest_id_on_ties() {
    let mut sampler = Sampler::new(&SamplingParams::default());
    assert_eq!(sampler.sample(&[0.1, 2.0, -1.0, 1.5]), 1);
    assert_eq!(sampler.sample(&[0.1, 3.0, 3.0, 3.0]), 1);
    assert_eq!(sampler.sample(&[5.0, 5.0]), 0);
    assert_eq!(sampler.sample(&big_logits(262_144)), 7);
}

#[test]
fn nan_and_infinite_logits_do_not_panic() {
    for temperature in [0.0, 1.0] {
        let mut sampler = Sampler::new(&SamplingParams {
            top_k: Some(2),
            top_p: Some(0.9),
            ..params(temperature, 3)
        });
        assert_eq!(sampler.sample(&[f32::NAN, 1.0, f32::NAN]), 1);
        assert_eq!(sampler.sample(&[f32::NAN, f32::NAN]), 0);
        assert_eq!(sampler.sample(&[f32::NEG_INFINITY; 4]), 0);
        assert_eq!(sampler.sample(&[]), 0);
        assert_eq!(sampler.sample(&[1.0, f32::INFINITY, f32::INFINITY]), 1);
        for _ in 0..100 {
            assert!(sampler.sample(&[f32::NAN, 1.0, f32::NEG_INFINITY, 1.0]) % 2 == 1);
        }
    }
}

#[test]
fn same_seed_same_tokens() {
    let logits = [1.0, 1.2, 0.8, 1.1, 0.9];
    let p = SamplingParams {
        top_k: Some(4),
        top_p: Some(0.95),
        ..params(1.0, 1234)
    };
    assert_eq!(draws(&p, &logits, 200), draws(&p, &logits, 200));
}

#[test]
fn different_seeds_differ() {
    let flat = [0.0f32; 16];
    let a = draws(&params(1.0, 1), &flat, 200);
    let b = draws(&params(1.0, 2), &flat, 200);
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    // Independent uniform draws over 16 tokens agree about 1 time in 16.
    assert!(same < 50, "{same} of 200 draws agree");
}

#[test]
fn top_k_one_equals_greedy() {
    let logits = big_logits(151_936);
    let p = SamplingParams {
        top_k: Some(1),
        ..params(1.5, 9)
    };
    assert!(draws(&p, &logits, 20).iter().all(|&t| t == 7));
    let ties = [0.5, 2.0, 2.0];
    assert!(draws(&p, &ties, 20).iter().all(|&t| t == 1));
}

#[test]
fn tiny_top_p_equals_greedy() {
    let logits = big_logits(262_144);
    let p = SamplingParams {
        top_p: Some(1e-6),
        ..params(1.0, 5)
    };
    assert!(draws(&p, &logits, 20).iter().all(|&t| t == 7));
    let ties = [0.5, 2.0, 2.0];
    assert!(draws(&p, &ties, 20).iter().all(|&t| t == 1));
}

#[test]
fn top_k_and_top_p_restrict_the_draws() {
    let logits = big_logits(262_144);
    let p = SamplingParams {
        top_k: Some(3),
        ..params(1.0, 11)
    };
    let seen = draws(&p, &logits, 200);
    assert!(seen.iter().all(|t| [7, 150_001, 42].contains(t)));
    assert!([7, 150_001, 42].iter().all(|t| seen.contains(t)));

    // The winners have weights 1, 0.61, 0.37 against ~0.4 for the whole tail, so the first
    // holds ~42% of the mass and a nucleus of 0.5 keeps exactly the first two.
    let p = SamplingParams {
        top_p: Some(0.5),
        ..params(1.0, 11)
    };
    let seen = draws(&p, &logits, 200);
    assert!(seen.iter().all(|t| [7, 150_001].contains(t)), "{seen:?}");
}

#[test]
fn nucleus_beyond_the_first_chunk() {
    // A flat distribution needs the whole vocabulary for a nucleus of 0.99.
    let flat = vec![0.0f32; 1000];
    let p = SamplingParams {
        top_p: Some(0.99),
        ..params(1.0, 2)
    };
    let seen = draws(&p, &flat, 2000);
    assert!(seen.iter().any(|&t| t >= 900), "the nucleus stopped early");
    assert!(seen.iter().all(|&t| t < 1000));
}

#[test]
fn temperature_sampling_matches_softmax() {
    let logits = [2.0f32, 1.0, 0.0];
    for temperature in [1.0f32, 0.5] {
        let n = 10_000;
        let mut counts = [0usize; 3];
        for t in draws(&params(temperature, 77), &logits, n) {
            counts[t as usize] += 1;
        }
        let weights: Vec<f64> = logits
            .iter()
            .map(|&l| (f64::from(l) / f64::from(temperature)).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        for (count, weight) in counts.iter().zip(&weights) {
            let observed = *count as f64 / n as f64;
            let expected = weight / total;
            assert!(
                (observed - expected).abs() < 0.02,
                "T={temperature}: observed {observed:.3}, expected {expected:.3}"
            );
        }
    }
}

#[test]
fn validate_names_the_field() {
    let field = |p: SamplingParams| match p.validate() {
        Err(Error::InvalidArgument { name, .. }) => name,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    let base = SamplingParams::default;
    assert_eq!(field(params(-0.1, 0)), "temperature");
    assert_eq!(field(params(f32::NAN, 0)), "temperature");
    assert_eq!(field(params(f32::INFINITY, 0)), "temperature");
    for top_p in [0.0, -0.5, 1.01, f32::NAN] {
        let p = SamplingParams {
            top_p: Some(top_p),
            ..base()
        };
        assert_eq!(field(p), "top_p");
    }
    let p = SamplingParams {
        top_k: Some(0),
        ..base()
    };
    assert_eq!(field(p), "top_k");
    let p = SamplingParams {
        max_new_tokens: 0,
        ..base()
    };
    assert_eq!(field(p), "max_new_tokens");
    let ok = SamplingParams {
        top_k: Some(1),
        top_p: Some(1.0),
        ..params(0.7, 1)
    };
    assert!(ok.validate().is_ok());
    let err = params(-1.0, 0).validate().unwrap_err().to_string();
    assert!(err.contains("`temperature`"), "{err}");
}
