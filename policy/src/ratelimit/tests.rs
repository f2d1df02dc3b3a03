use std::time::Duration;

use governor::clock::FakeRelativeClock;

use super::*;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

#[test]
fn requests_per_second_with_burst() {
    let clock = FakeRelativeClock::default();
    let spec = LimitSpec {
        requests: Some(RequestRate {
            count: nz(2),
            per: Per::Second,
            burst: nz(3),
        }),
        ..LimitSpec::default()
    };
    let l = TenantLimiter::with_clock(&spec, clock.clone());
    for _ in 0..3 {
        l.admit(0).unwrap().complete(0);
    }
    let refusal = l.admit(0).unwrap_err();
    assert_eq!(refusal.exceeded, Exceeded::Requests);
    assert_eq!(refusal.retry_after, Duration::from_millis(500));
    assert_eq!(refusal.status.limit_requests, Some(3));
    assert_eq!(refusal.status.remaining_requests, 0);
    clock.advance(Duration::from_millis(500));
    assert_eq!(l.status().remaining_requests, 1);
    l.admit(0).unwrap().complete(0);
    assert!(l.admit(0).is_err());
}

#[test]
fn per_minute_quota() {
    let clock = FakeRelativeClock::default();
    let spec = LimitSpec {
        requests: Some(RequestRate {
            count: nz(60),
            per: Per::Minute,
            burst: nz(1),
        }),
        ..LimitSpec::default()
    };
    let l = TenantLimiter::with_clock(&spec, clock.clone());
    l.admit(0).unwrap().complete(0);
    assert_eq!(l.admit(0).unwrap_err().retry_after, Duration::from_secs(1));
    clock.advance(Duration::from_secs(1));
    assert!(l.admit(0).is_ok());
}

#[test]
fn tokens_reserved_then_unused_part_returned() {
    let clock = FakeRelativeClock::default();
    let spec = LimitSpec {
        tokens_per_minute: Some(nz(600)),
        ..LimitSpec::default()
    };
    let l = TenantLimiter::with_clock(&spec, clock.clone());
    let a = l.admit(400).unwrap();
    assert_eq!(l.status().remaining_tokens, 200);
    let refusal = l.admit(300).unwrap_err();
    assert_eq!(refusal.exceeded, Exceeded::Tokens);
    // 100 tokens short at 10 tokens/s.
    assert_eq!(refusal.retry_after, Duration::from_secs(10));
    a.complete(100);
    assert_eq!(l.status().remaining_tokens, 500);
    let b = l.admit(300).unwrap();
    drop(b); // dropped: keeps its whole reservation
    assert_eq!(l.status().remaining_tokens, 200);
    clock.advance(Duration::from_secs(30));
    assert_eq!(l.status().remaining_tokens, 500);
    assert_eq!(l.admit(601).unwrap_err().exceeded, Exceeded::TooLarge);
}

#[test]
fn concurrent_reservations_never_overrun_the_budget() {
    let clock = FakeRelativeClock::default();
    let spec = LimitSpec {
        tokens_per_minute: Some(nz(1000)),
        ..LimitSpec::default()
    };
    let l = TenantLimiter::with_clock(&spec, clock);
    let admitted: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..200).map(|_| s.spawn(|| l.admit(30).ok())).collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(admitted.len(), 33);
    assert!(admitted.iter().map(|a| a.reserved()).sum::<u32>() <= 1000);
}

#[test]
fn max_concurrent_slots() {
    let clock = FakeRelativeClock::default();
    let spec = LimitSpec {
        max_concurrent: Some(nz(2)),
        ..LimitSpec::default()
    };
    let l = TenantLimiter::with_clock(&spec, clock);
    let a = l.admit(0).unwrap();
    let _b = l.admit(0).unwrap();
    assert_eq!(l.admit(0).unwrap_err().exceeded, Exceeded::Concurrency);
    a.complete(0);
    assert_eq!(l.in_flight(), 1);
    assert!(l.admit(0).is_ok());
}

#[test]
fn a_refusal_consumes_nothing() {
    let clock = FakeRelativeClock::default();
    let spec = LimitSpec {
        requests: Some(RequestRate {
            count: nz(1),
            per: Per::Second,
            burst: nz(5),
        }),
        tokens_per_minute: Some(nz(100)),
        max_concurrent: Some(nz(10)),
    };
    let l = TenantLimiter::with_clock(&spec, clock);
    assert_eq!(l.admit(200).unwrap_err().exceeded, Exceeded::TooLarge);
    assert_eq!(l.in_flight(), 0);
    assert_eq!(l.status().remaining_requests, 5);
    assert_eq!(l.status().remaining_tokens, 100);
}

#[test]
fn an_occupied_slot_counts_until_its_admission_ends() {
    let spec = LimitSpec {
        max_concurrent: Some(nz(1)),
        requests: Some(RequestRate {
            count: nz(1),
            per: Per::Minute,
            burst: nz(1),
        }),
        ..LimitSpec::default()
    };
    let l = TenantLimiter::with_clock(&spec, FakeRelativeClock::default());
    let slot = l.occupy().unwrap();
    assert_eq!(l.occupy().unwrap_err().exceeded, Exceeded::Concurrency);
    assert_eq!(l.in_flight(), 1);
    // The slot moves into the admission; it is not taken twice.
    let admission = l.admit_occupied(slot, 0).unwrap();
    assert_eq!(l.in_flight(), 1);
    drop(admission);
    assert_eq!(l.in_flight(), 0);
    // A refusal by another limit releases the slot.
    let slot = l.occupy().unwrap();
    assert_eq!(
        l.admit_occupied(slot, 0).unwrap_err().exceeded,
        Exceeded::Requests
    );
    assert_eq!(l.in_flight(), 0);
}

#[test]
fn a_slot_from_another_limiter_is_exchanged() {
    let spec = LimitSpec {
        max_concurrent: Some(nz(1)),
        ..LimitSpec::default()
    };
    let old = TenantLimiter::with_clock(&spec, FakeRelativeClock::default());
    let new = TenantLimiter::with_clock(&spec, FakeRelativeClock::default());
    let slot = old.occupy().unwrap();
    let admission = new.admit_occupied(slot, 0).unwrap();
    assert_eq!((old.in_flight(), new.in_flight()), (0, 1));
    drop(admission);
    assert_eq!(new.in_flight(), 0);
}
