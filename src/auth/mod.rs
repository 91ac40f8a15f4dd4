//! Supabase-style JWTs: HS256 with a shared secret, `aud = authenticated`,
//! and the user's UUID in `sub`. Tokens never reach a log line.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const AUDIENCE: &str = "authenticated";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (its `nbf` is in the future)")]
    NotYetValid,
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A valid token that names no user (Supabase's anon or service_role).
    #[error("token has no user (`sub`); anon and service_role tokens cannot be used here")]
    NoUser,
}

impl AuthError {
    /// 403 for a valid token without a user, 401 for everything else.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::NoUser)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("the JWT secret is empty: set --jwt-secret / RAG_JWT_SECRET")]
pub struct EmptySecret;

/// The caller, once the token is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: Uuid,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// Cheap to clone (one `Arc`): every WebSocket keeps one for
/// `auth.refresh`, and a deep copy costs a few hundred bytes per socket.
#[derive(Clone)]
pub struct Verifier(Arc<Keys>);

struct Keys {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn new(secret: &str) -> Result<Verifier, EmptySecret> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        Ok(Verifier(Arc::new(Keys {
            key: DecodingKey::from_secret(secret.as_bytes()).map_err(|_| EmptySecret)?,
            validation,
        })))
    }

    pub fn verify(&self, token: &str) -> Result<AuthUser, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.0.key, &self.0.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm must be HS256".into()),
                ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing `{c}`")),
                _ => AuthError::Invalid("malformed token".into()),
            },
        )?;
        let sub = data.claims.sub.ok_or(AuthError::NoUser)?;
        let user_id =
            Uuid::parse_str(&sub).map_err(|_| AuthError::Invalid("`sub` is not a UUID".into()))?;
        Ok(AuthUser {
            user_id,
            exp: data.claims.exp,
        })
    }
}

/// Signs a token for `user_id`, as Supabase would for a signed-in user.
pub fn mint(secret: &str, user_id: Uuid, ttl: Duration) -> Result<String, EmptySecret> {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let claims = Claims {
        sub: Some(user_id.to_string()),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        aud: AUDIENCE.to_string(),
        role: Some("authenticated".to_string()),
    };
    let key = EncodingKey::from_secret(secret.as_bytes()).map_err(|_| EmptySecret)?;
    Ok(
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
            .expect("HS256 signing with a non-empty key cannot fail"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    fn sign(secret: &str, claims: serde_json::Value, alg: &str) -> String {
        let header = B64.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let body = B64.encode(claims.to_string());
        if alg == "none" {
            return format!("{header}.{body}.");
        }
        let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
        let sig = jsonwebtoken::crypto::sign(
            format!("{header}.{body}").as_bytes(),
            &key,
            Algorithm::HS256,
        )
        .unwrap();
        format!("{header}.{body}.{sig}")
    }

    #[test]
    fn good_token_round_trips() {
        let user = Uuid::new_v4();
        let t = mint("s3cret", user, Duration::from_secs(60)).unwrap();
        assert_eq!(
            Verifier::new("s3cret").unwrap().verify(&t).unwrap().user_id,
            user
        );
    }

    #[test]
    fn bad_tokens_are_refused_for_the_right_reason() {
        let v = Verifier::new("s3cret").unwrap();
        let user = Uuid::new_v4().to_string();
        let future = chrono::Utc::now().timestamp() + 600;
        let past = chrono::Utc::now().timestamp() - 600;
        let ok = serde_json::json!({"sub": user, "exp": future, "aud": "authenticated"});
        assert!(v.verify(&sign("s3cret", ok.clone(), "HS256")).is_ok());
        assert_eq!(v.verify(""), Err(AuthError::Missing));
        assert!(matches!(
            v.verify(&sign("other", ok.clone(), "HS256")),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            v.verify(&sign("s3cret", ok.clone(), "none")),
            Err(AuthError::Invalid(_))
        ));
        let expired = serde_json::json!({"sub": user, "exp": past, "aud": "authenticated"});
        assert_eq!(
            v.verify(&sign("s3cret", expired, "HS256")),
            Err(AuthError::Expired)
        );
        let early = serde_json::json!({"sub": user, "exp": future, "nbf": future - 300, "aud": "authenticated"});
        assert_eq!(
            v.verify(&sign("s3cret", early, "HS256")),
            Err(AuthError::NotYetValid)
        );
        let started =
            serde_json::json!({"sub": user, "exp": future, "nbf": past, "aud": "authenticated"});
        assert!(v.verify(&sign("s3cret", started, "HS256")).is_ok());
        let wrong_aud = serde_json::json!({"sub": user, "exp": future, "aud": "anon"});
        assert_eq!(
            v.verify(&sign("s3cret", wrong_aud, "HS256")),
            Err(AuthError::Invalid("wrong audience".into()))
        );
        let anon = serde_json::json!({"role": "anon", "exp": future, "aud": "authenticated"});
        let e = v.verify(&sign("s3cret", anon, "HS256")).unwrap_err();
        assert!(e.is_forbidden());
        let not_uuid = serde_json::json!({"sub": "bob", "exp": future, "aud": "authenticated"});
        assert!(matches!(
            v.verify(&sign("s3cret", not_uuid, "HS256")),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(v.verify("a.b.c"), Err(AuthError::Invalid(_))));
    }
}
