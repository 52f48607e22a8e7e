//! User tokens verified against a JWKS (ES256) served on loopback: the key is
//! found by `kid`, cached, and no other algorithm or key gets in.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use scaling_service::auth::{AuthError, Authenticator};
use scaling_service::config::Cli;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `body` as the JWKS and counts fetches.
async fn jwks_server(body: String) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            counter.fetch_add(1, Ordering::SeqCst);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(response.as_bytes()).await;
        }
    });
    (url, fetches, task)
}

fn authenticator(jwks_url: &str) -> Authenticator {
    let argv = [
        "scaling-service",
        "--database-url",
        "postgres://unused@127.0.0.1/unused",
        "--auth-jwks-url",
        jwks_url,
        "--auth-audience",
        support::AUDIENCE,
        "--auth-issuer",
        support::ISSUER,
    ];
    Authenticator::from_config(&Cli::try_parse_from(argv).unwrap().config).unwrap()
}

fn claims(sub: &str, exp_in: i64) -> serde_json::Value {
    json!({"sub": sub, "aud": support::AUDIENCE, "iss": support::ISSUER, "exp": chrono::Utc::now().timestamp() + exp_in})
}

#[tokio::test]
async fn es256_tokens_verify_against_the_jwks_and_nothing_else_gets_in() {
    berth_common::tls::install_crypto_provider();
    let key = rcgen::KeyPair::generate().unwrap();
    let point = key.public_key_raw(); // 0x04 ‖ X ‖ Y
    assert_eq!(point.len(), 65);
    let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "k1",
                     "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])});
    let (url, fetches, server) = jwks_server(json!({"keys": [jwk]}).to_string()).await;
    let auth = authenticator(&url);
    let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let sign = |kid: &str, c: &serde_json::Value| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, c, &signing).unwrap()
    };

    assert_eq!(
        auth.user(&sign("k1", &claims("carol", 300))).await.unwrap(),
        "carol"
    );
    assert_eq!(
        auth.user(&sign("k1", &claims("dave", 300))).await.unwrap(),
        "dave"
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "the key set is cached");

    let refused = [
        ("unknown key", sign("k2", &claims("carol", 300))),
        ("expired", sign("k1", &claims("carol", -3600))),
        (
            "HS256 with the public key as secret (algorithm confusion)",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims("carol", 300),
                &EncodingKey::from_secret(point),
            )
            .unwrap(),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#),
                URL_SAFE_NO_PAD.encode(claims("carol", 300).to_string())
            ),
        ),
    ];
    for (what, token) in refused {
        let err = auth.user(&token).await.unwrap_err();
        assert!(matches!(err, AuthError::Invalid(_)), "{what}: {err}");
    }
    // Another key pair signing with the right kid: the signature does not verify.
    let other = rcgen::KeyPair::generate().unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let forged = jsonwebtoken::encode(
        &header,
        &claims("carol", 300),
        &EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        auth.user(&forged).await,
        Err(AuthError::Invalid(_))
    ));

    // The JWKS goes away: cached keys keep working; a cold cache says so.
    server.abort();
    assert_eq!(
        auth.user(&sign("k1", &claims("erin", 300))).await.unwrap(),
        "erin"
    );
    let cold = authenticator(&url);
    assert!(matches!(
        cold.user(&sign("k1", &claims("erin", 300))).await,
        Err(AuthError::KeysUnavailable(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_key_set_is_not_fetched_by_every_request() {
    let (url, fetches, task) = jwks_server("this is not a key set".to_owned()).await;
    let auth = authenticator(&url);
    let header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "typ": "JWT", "kid": "k1"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims("alice", 300).to_string());
    let token = format!("{header}.{payload}.c2ln");
    for _ in 0..50 {
        let refused = auth.user(&token).await;
        assert!(
            matches!(refused, Err(AuthError::KeysUnavailable(_))),
            "{refused:?}"
        );
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "after a failed fetch the next waits (backed off), whatever the request rate"
    );
    task.abort();
}
