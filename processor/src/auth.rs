//! API authentication: login, HS256 tokens, and the extractors that guard every route.

use crate::AppState;
use crate::error::ApiError;
use crate::storage;
use crate::users::{self, Role};
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use shared::keys::Secret;
use uuid::Uuid;

mod hs256;

pub use hs256::install as install_token_crypto;

pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub ttl_secs: u64,
}

impl Tokens {
    /// Refuses a missing or short secret: an HS256 key shorter than its hash is guessable.
    pub fn new(secret: Option<&Secret>, ttl_secs: u64) -> anyhow::Result<Self> {
        let secret = secret.ok_or_else(|| {
            anyhow::anyhow!("JWT_SECRET is required (at least {MIN_SECRET_BYTES} bytes)")
        })?;
        let bytes = secret.expose().as_bytes();
        if bytes.len() < MIN_SECRET_BYTES {
            anyhow::bail!(
                "JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes, got {}",
                bytes.len()
            );
        }
        hs256::install()?;
        // Only HS256 is accepted: `alg: none` and every other algorithm fail validation.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        // A token may be issued by one processor copy and checked by another whose clock is a
        // little ahead: a few seconds of leeway (the library's default is 60) on `exp` and `nbf`.
        validation.leeway = 5;
        validation.validate_nbf = true;
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes)?,
            decoding: DecodingKey::from_secret(bytes)?,
            validation,
            ttl_secs,
        })
    }

    pub fn issue(&self, user_id: Uuid, role: Role) -> Result<String, ApiError> {
        let iat = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims {
            sub: user_id,
            role,
            iat,
            exp: iat + self.ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("cannot sign a token: {e}")))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|_| ApiError::Unauthorized)
    }
}

/// Checks a username and password; the same error whether the user exists or not.
pub async fn login(
    state: &AppState,
    username: &str,
    password: String,
) -> Result<(String, Role), ApiError> {
    // A name no user can have (see `validate_username`) is not looked up: it may hold what
    // PostgreSQL refuses in text (NUL), and it is refused like any unknown user.
    let row = match users::validate_username(username) {
        Ok(()) => storage::users::by_username(&state.db, username).await?,
        Err(_) => None,
    };
    let hash = match &row {
        Some(r) => r.password_hash.clone(),
        None => users::dummy_hash().await.to_owned(),
    };
    let ok = users::verify_password(password, hash).await;
    match row {
        Some(row) if ok => {
            let user = users::User::try_from(row)?;
            tracing::info!(module = "auth", operation = "login", status = "ok", user_id = %user.id, "Login.");
            Ok((state.tokens.issue(user.id, user.role)?, user.role))
        }
        _ => {
            tracing::info!(
                module = "auth",
                operation = "login",
                status = "refused",
                "Login refused."
            );
            Err(ApiError::BadCredentials)
        }
    }
}

/// Any authenticated user. The user's role is read from the database on every request (a
/// primary-key lookup), so a deleted or demoted user loses access at once, not at token expiry.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub id: Uuid,
    pub role: Role,
}

/// An authenticated admin.
#[derive(Debug, Clone)]
pub struct AdminUser(pub CurrentUser);

/// The bearer token of a request with exactly one `Authorization` header: of two, which one the
/// caller meant is a guess (the gateway refuses the same for device keys).
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    shared::http::bearer_token(shared::http::single_header(
        headers,
        header::AUTHORIZATION.as_str(),
    )??)
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let claims = state.tokens.verify(token)?;
        let role = storage::users::role_of(&state.db, claims.sub)
            .await?
            .and_then(|r| Role::parse(&r))
            .ok_or(ApiError::Unauthorized)?;
        Ok(CurrentUser {
            id: claims.sub,
            role,
        })
    }
}

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = CurrentUser::from_request_parts(parts, state).await?;
        match user.role {
            Role::Admin => Ok(AdminUser(user)),
            Role::Analyst => Err(ApiError::Forbidden),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(Some(&Secret::new("0123456789abcdef0123456789abcdef")), 60).unwrap()
    }

    #[test]
    fn a_token_comes_from_exactly_one_authorization_header() {
        use axum::http::{HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer t1"));
        assert_eq!(bearer(&h), Some("t1"));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer t1"));
        assert_eq!(bearer(&h), None);
        let mut basic = HeaderMap::new();
        basic.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dDE="),
        );
        assert_eq!(bearer(&basic), None);
    }

    #[test]
    fn a_short_or_missing_secret_is_refused() {
        assert!(Tokens::new(None, 60).is_err());
        assert!(Tokens::new(Some(&Secret::new("short")), 60).is_err());
    }

    #[test]
    fn an_issued_token_verifies_and_carries_its_claims() {
        let t = tokens();
        let id = Uuid::new_v4();
        let claims = t.verify(&t.issue(id, Role::Analyst).unwrap()).unwrap();
        assert_eq!(claims.sub, id);
        assert_eq!(claims.role, Role::Analyst);
        assert_eq!(claims.exp - claims.iat, 60);
    }

    #[test]
    fn forged_expired_and_unsigned_tokens_are_refused() {
        let t = tokens();
        let other =
            Tokens::new(Some(&Secret::new("another-secret-another-secret-xx")), 60).unwrap();
        let forged = other.issue(Uuid::new_v4(), Role::Admin).unwrap();
        assert!(t.verify(&forged).is_err());

        let now = chrono::Utc::now().timestamp() as u64;
        let expired = Claims {
            sub: Uuid::new_v4(),
            role: Role::Admin,
            iat: now - 7200,
            exp: now - 3600,
        };
        let expired =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &expired, &t.encoding).unwrap();
        assert!(t.verify(&expired).is_err());

        // alg: none, hand-made: header {"alg":"none","typ":"JWT"}, no signature.
        use std::fmt::Write;
        let b64 = |s: &str| {
            const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let bytes = s.as_bytes();
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
                for i in 0..=chunk.len() {
                    out.write_char(T[((n >> (18 - 6 * i)) & 63) as usize] as char)
                        .unwrap();
                }
            }
            out
        };
        let payload = format!(
            r#"{{"sub":"{}","role":"admin","iat":{now},"exp":{}}}"#,
            Uuid::new_v4(),
            now + 600
        );
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&payload)
        );
        assert!(t.verify(&none).is_err());
        assert!(t.verify("garbage").is_err());
    }
}
