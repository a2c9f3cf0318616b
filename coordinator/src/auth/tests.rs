use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use tonic::metadata::MetadataMap;

use super::*;

fn header(value: &str) -> MetadataMap {
    let mut m = MetadataMap::new();
    m.insert("authorization", value.parse().unwrap());
    m
}

fn basic(user: &str, password: &str) -> MetadataMap {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    header(&format!("Basic {b}"))
}

fn with_passwords(dir: &Path) -> Arc<Authenticator> {
    let path = dir.join("passwords");
    password::set_password(&path, "alice", "wonderland").unwrap();
    password::set_password(&path, "root", "toor").unwrap();
    let settings = AuthSettings {
        password_file: Some(path),
        admins: vec!["root".into()],
        ..Default::default()
    };
    Arc::new(Authenticator::new(&settings, None).unwrap())
}

fn message(r: Result<Identity, Status>) -> String {
    let status = r.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    status.message().to_string()
}

#[tokio::test]
async fn password_sign_in_gives_a_session_token_every_rpc_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let auth = with_passwords(dir.path());
    let (identity, token) = auth
        .handshake(&basic("alice", "wonderland"), &[])
        .await
        .unwrap();
    assert_eq!(identity.user, "alice");
    assert!(!identity.admin);
    let again = auth
        .authenticate(&header(&format!("Bearer {token}")))
        .unwrap();
    assert_eq!(again, identity);
    let (root, _) = auth.handshake(&basic("root", "toor"), &[]).await.unwrap();
    assert!(root.admin && root.may_access("alice") && !identity.may_access("root"));

    let wrong = auth
        .handshake(&basic("alice", "nope"), &[])
        .await
        .map(|x| x.0);
    assert!(message(wrong).contains("wrong user name or password"));
    let unknown = auth
        .handshake(&basic("mallory", "x"), &[])
        .await
        .map(|x| x.0);
    assert!(message(unknown).contains("wrong user name or password"));
    assert!(message(auth.authenticate(&MetadataMap::new())).contains("no credentials"));
    assert!(message(auth.authenticate(&basic("alice", "wonderland"))).contains("Bearer"));

    // A token signed by another process (or altered) is refused.
    let other = with_passwords(tempfile::tempdir().unwrap().path());
    let foreign = other.session_token("alice");
    assert!(
        message(auth.authenticate(&header(&format!("Bearer {foreign}")))).contains("not issued")
    );
    let altered = token.replacen(".", ".x", 1);
    assert!(auth
        .authenticate(&header(&format!("Bearer {altered}")))
        .is_err());
    assert!(auth.authenticate(&header("Bearer weft-made-up")).is_err());

    // Expired.
    let user = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("alice");
    let payload = format!("{SESSION_PREFIX}.{user}.1");
    let tag = hmac::sign(&auth.session_key, payload.as_bytes());
    let expired = format!("{payload}.{}", hex(tag.as_ref()));
    assert!(message(auth.authenticate(&header(&format!("Bearer {expired}")))).contains("expired"));
}

#[tokio::test]
async fn the_password_file_is_reread_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let auth = with_passwords(dir.path());
    let (_, token) = auth
        .handshake(&basic("alice", "wonderland"), &[])
        .await
        .unwrap();
    let path = dir.path().join("passwords");
    // Rewrite the file without alice (a new size, so the change is seen at once).
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("alice:")).collect();
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    let refused = auth.authenticate(&header(&format!("Bearer {token}")));
    assert!(message(refused).contains("no longer in the password file"));
    password::set_password(&path, "bob", "builder").unwrap();
    assert!(auth.handshake(&basic("bob", "builder"), &[]).await.is_ok());
}

#[tokio::test]
async fn basic_auth_in_the_handshake_payload_works_too() {
    let dir = tempfile::tempdir().unwrap();
    let auth = with_passwords(dir.path());
    let payload = prost::Message::encode_to_vec(&arrow_flight::BasicAuth {
        username: "alice".into(),
        password: "wonderland".into(),
    });
    let (identity, _) = auth.handshake(&MetadataMap::new(), &payload).await.unwrap();
    assert_eq!(identity.user, "alice");
}

#[tokio::test]
async fn open_mode_lets_everyone_in_as_admin() {
    let auth = Arc::new(Authenticator::open());
    assert!(!auth.enabled());
    assert_eq!(
        auth.authenticate(&MetadataMap::new()).unwrap(),
        Identity::open()
    );
    assert!(auth.handshake(&MetadataMap::new(), &[]).await.is_ok());
}

fn claims(sub: &str, exp_in: i64) -> serde_json::Value {
    serde_json::json!({
        "sub": sub,
        "email": format!("{sub}@example.com"),
        "iss": "https://idp.example.com",
        "aud": "weft",
        "exp": (unix_now() as i64 + exp_in),
    })
}

fn jwt_auth(settings: JwtSettings) -> Authenticator {
    Authenticator::new(
        &AuthSettings {
            jwt: Some(settings),
            ..Default::default()
        },
        None,
    )
    .unwrap()
}

fn bearer(auth: &Authenticator, token: &str) -> Result<Identity, Status> {
    auth.authenticate(&header(&format!("Bearer {token}")))
}

#[test]
fn hs256_tokens_are_checked_for_signature_expiry_issuer_and_audience() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hs.key");
    let secret = "0123456789abcdef0123456789abcdef";
    std::fs::write(&key, secret).unwrap();
    let auth = jwt_auth(JwtSettings {
        key_file: Some(key),
        issuer: Some("https://idp.example.com".into()),
        audience: Some("weft".into()),
        user_claim: "email".into(),
        ..Default::default()
    });
    let sign = |c: &serde_json::Value, s: &str| {
        encode(
            &Header::default(),
            c,
            &EncodingKey::from_secret(s.as_bytes()),
        )
        .unwrap()
    };
    let ok = bearer(&auth, &sign(&claims("dana", 600), secret)).unwrap();
    assert_eq!(ok.user, "dana@example.com");
    let expired = bearer(&auth, &sign(&claims("dana", -600), secret));
    assert!(message(expired).contains("expired"));
    let forged = bearer(
        &auth,
        &sign(&claims("dana", 600), "another secret of 32 bytes......"),
    );
    assert!(message(forged).contains("signature"));
    let mut c = claims("dana", 600);
    c["iss"] = "https://evil.example.com".into();
    assert!(message(bearer(&auth, &sign(&c, secret))).contains("issuer"));
    let mut c = claims("dana", 600);
    c["aud"] = "other".into();
    assert!(message(bearer(&auth, &sign(&c, secret))).contains("audience"));
    let mut c = claims("dana", 600);
    c.as_object_mut().unwrap().remove("email");
    assert!(message(bearer(&auth, &sign(&c, secret))).contains("\"email\""));
    // "alg": "none" and algorithm confusion are refused.
    let none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims("x", 600).to_string())
    );
    assert!(bearer(&auth, &none).is_err());
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private key (PKCS#8 PEM) and its public key (SPKI PEM).
fn key_pair(dir: &Path, name: &str, algorithm: &[&str]) -> (Vec<u8>, std::path::PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let mut args = vec!["genpkey"];
    args.extend_from_slice(algorithm);
    args.extend_from_slice(&["-out", private.to_str().unwrap()]);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (std::fs::read(&private).unwrap(), public)
}

#[test]
fn rs256_and_es256_tokens_verify_with_public_keys_and_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, rsa_pub) = key_pair(
        dir.path(),
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let (ec, ec_pub) = key_pair(
        dir.path(),
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let rs_key = EncodingKey::from_rsa_pem(&rsa).unwrap();
    let es_key = EncodingKey::from_ec_pem(&ec).unwrap();
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &claims("erin", 600),
        &rs_key,
    )
    .unwrap();
    let es = encode(
        &Header::new(Algorithm::ES256),
        &claims("erin", 600),
        &es_key,
    )
    .unwrap();

    let by_rsa = jwt_auth(JwtSettings {
        key_file: Some(rsa_pub),
        ..Default::default()
    });
    assert_eq!(bearer(&by_rsa, &rs).unwrap().user, "erin");
    assert!(message(bearer(&by_rsa, &es)).contains("no configured key"));
    let by_ec = jwt_auth(JwtSettings {
        key_file: Some(ec_pub.clone()),
        ..Default::default()
    });
    assert_eq!(bearer(&by_ec, &es).unwrap().user, "erin");
    assert!(bearer(&by_ec, &rs).is_err());

    // A JWKS with the EC key under a kid; the token names it.
    let jwk = ec_jwk(&ec_pub, "k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
    let by_jwks = jwt_auth(JwtSettings {
        jwks_file: Some(jwks),
        ..Default::default()
    });
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k1".into());
    let with_kid = encode(&h, &claims("frank", 600), &es_key).unwrap();
    assert_eq!(bearer(&by_jwks, &with_kid).unwrap().user, "frank");
    h.kid = Some("k2".into());
    let other_kid = encode(&h, &claims("frank", 600), &es_key).unwrap();
    assert!(message(bearer(&by_jwks, &other_kid)).contains("kid \"k2\""));
}

/// The JWK of an EC P-256 public key (its x and y from the SPKI DER's tail).
fn ec_jwk(public_pem: &Path, kid: &str) -> serde_json::Value {
    let pem = std::fs::read_to_string(public_pem).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let point = &der[der.len() - 65..];
    assert_eq!(point[0], 4, "uncompressed point");
    let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    serde_json::json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": enc(&point[1..33]), "y": enc(&point[33..]),
    })
}

#[test]
fn bad_key_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "tooshort").unwrap();
    let err = Authenticator::new(
        &AuthSettings {
            jwt: Some(JwtSettings {
                key_file: Some(short.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        None,
    )
    .unwrap_err();
    assert!(
        err.contains("at least 32") && err.contains("short"),
        "{err}"
    );
    let missing = dir.path().join("missing");
    let err = Authenticator::new(
        &AuthSettings {
            password_file: Some(missing),
            ..Default::default()
        },
        None,
    )
    .unwrap_err();
    assert!(err.contains("missing"), "{err}");
}
