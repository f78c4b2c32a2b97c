//! Bounded retries before the first token, never after it.

use super::*;

#[tokio::test]
async fn open_with_retries_succeeds_after_two_500s_with_three_attempts() {
    let fake = fake().await;
    fake.set_mode(Mode::FailTimes {
        status: 500,
        times: 2,
    });
    let provider = provider(&fake, ProviderKind::OpenAi, GENEROUS);
    let stream = open_with_retries(
        provider.as_ref(),
        &request(ProviderKind::OpenAi),
        3,
        Duration::from_millis(10),
    )
    .await
    .unwrap();
    assert_eq!(collect(stream).await, default_events("stop"));
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn open_with_retries_gives_unavailable_when_the_attempts_run_out() {
    let fake = fake().await;
    fake.set_mode(Mode::FailTimes {
        status: 500,
        times: 5,
    });
    let provider = provider(&fake, ProviderKind::Anthropic, GENEROUS);
    let outcome = open_with_retries(
        provider.as_ref(),
        &request(ProviderKind::Anthropic),
        3,
        Duration::from_millis(10),
    )
    .await;
    assert!(
        matches!(outcome, Err(ProviderError::Unavailable(_))),
        "{:?}",
        outcome.err()
    );
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn open_with_retries_does_not_retry_a_rejected_key() {
    let fake = fake().await;
    let provider = provider_with_key(
        &fake,
        ProviderKind::OpenAi,
        "sk-not-accepted-0000",
        GENEROUS,
    );
    let outcome = open_with_retries(
        provider.as_ref(),
        &request(ProviderKind::OpenAi),
        3,
        Duration::from_millis(10),
    )
    .await;
    assert!(matches!(outcome, Err(ProviderError::Rejected(_))));
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn open_with_retries_waits_as_long_as_retry_after_asks() {
    let fake = Arc::new(fake().await);
    fake.set_mode(Mode::Status {
        status: 429,
        retry_after_secs: Some(1),
    });
    // The rate limit lifts well before the second attempt, which must still wait the full second.
    let lifter = {
        let fake = fake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            fake.set_mode(Mode::Normal);
        })
    };
    let provider = provider(&fake, ProviderKind::OpenAi, GENEROUS);
    let started = Instant::now();
    let stream = open_with_retries(
        provider.as_ref(),
        &request(ProviderKind::OpenAi),
        3,
        Duration::from_millis(10),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(collect(stream).await, default_events("stop"));
    assert_eq!(fake.requests().len(), 2);
    lifter.await.unwrap();
}

#[tokio::test]
async fn open_with_retries_gives_up_when_retry_after_is_longer_than_the_cap() {
    let fake = fake().await;
    fake.set_mode(Mode::Status {
        status: 429,
        retry_after_secs: Some(60),
    });
    let provider = provider(&fake, ProviderKind::Anthropic, GENEROUS);
    let started = Instant::now();
    let outcome = open_with_retries(
        provider.as_ref(),
        &request(ProviderKind::Anthropic),
        3,
        Duration::from_millis(10),
    )
    .await;
    assert!(
        matches!(
            &outcome,
            Err(ProviderError::RateLimited { retry_after: Some(wait), .. })
                if *wait == Duration::from_secs(60)
        ),
        "{:?}",
        outcome.err()
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn open_with_retries_retries_a_hang_before_the_first_token_but_never_after_it() {
    let fake = fake().await;
    fake.set_stream(StreamScript {
        hang_after: Some(0),
        ..StreamScript::default()
    });
    let provider = provider(&fake, ProviderKind::Anthropic, Duration::from_millis(300));
    let outcome = open_with_retries(
        provider.as_ref(),
        &request(ProviderKind::Anthropic),
        2,
        Duration::from_millis(10),
    )
    .await;
    assert_eq!(outcome.err(), Some(ProviderError::Timeout(1)));
    assert_eq!(fake.requests().len(), 2);

    fake.set_stream(StreamScript {
        hang_after: Some(1),
        ..StreamScript::default()
    });
    let stream = open_with_retries(
        provider.as_ref(),
        &request(ProviderKind::Anthropic),
        2,
        Duration::from_millis(10),
    )
    .await
    .unwrap();
    let mut expected = deltas(&["Hello"]);
    expected.push(Err(ProviderError::Timeout(1)));
    assert_eq!(collect(stream).await, expected);
    assert_eq!(fake.requests().len(), 3);
}
