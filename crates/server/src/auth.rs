//! Tokens and callers. Tokens are random, shown once, and stored only as SHA-256 hashes.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

/// A fresh token: `drome_` and 64 hex digits of operating-system randomness.
pub fn new_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ApiError::Internal(format!("no randomness for a token: {e}")))?;
    Ok(format!("drome_{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash a token is stored as.
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// The hash of a request's bearer token, left in its extensions by the front middleware
/// (`routes::track`), which works it out to find the tenant's seat: hashed once a request.
#[derive(Clone, Debug)]
pub(crate) struct TokenHash(pub String);

/// The hash of the request's bearer token: the one the middleware left, or worked out now.
pub(crate) fn caller_hash(parts: &Parts) -> Result<String, ApiError> {
    let token = bearer(&parts.headers)?;
    Ok(match parts.extensions.get::<TokenHash>() {
        Some(TokenHash(hash)) => hash.clone(),
        None => hash_token(token),
    })
}

/// Compares two hashes without an early exit.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who is calling.
#[derive(Clone, Debug)]
pub enum Caller {
    Admin,
    Tenant(store::Tenant),
}

pub(crate) fn bearer(headers: &header::HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer TOKEN header".into()))?;
    let value = value.to_str().map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be 'Bearer TOKEN'".into()))?;
    Ok(token)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let hash = caller_hash(parts)?;
        if same(&hash, &state.admin_hash) {
            return Ok(Caller::Admin);
        }
        let tenant = match state.tenant_cache.get(&hash) {
            Some(t) => t,
            None => match state.store.tenant_by_token_hash(&hash).await? {
                Some(t) => {
                    state.tenant_cache.put(hash, t.clone());
                    t
                }
                None => return Err(ApiError::Unauthorized("unknown token".into())),
            },
        };
        if tenant.removed_ms.is_some() {
            return Err(ApiError::Unauthorized("this tenant was removed".into()));
        }
        if tenant.token_expires_ms.is_some_and(|t| t <= crate::now_ms()) {
            return Err(ApiError::Unauthorized("this token has expired: ask the admin for a new one".into()));
        }
        // Every request of a tenant counts against its rate, whatever it asks. A refusal is
        // answered after a pause: a client that does not wait as told is slowed to a few
        // requests a second per connection, and its flood costs the server little.
        if let Err(refused) = state.limiter.request(tenant.id) {
            tokio::time::sleep(REFUSAL_PAUSE).await;
            return Err(refused);
        }
        Ok(Caller::Tenant(tenant))
    }
}

/// How long a request past its tenant's rate waits before its 429.
const REFUSAL_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// A caller that must be a tenant: work belongs to tenants.
pub struct TenantCaller(pub store::Tenant);

impl FromRequestParts<AppState> for TenantCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Tenant(t) => Ok(TenantCaller(t)),
            Caller::Admin => Err(ApiError::Forbidden("work belongs to tenants: call with a tenant's token".into())),
        }
    }
}

/// A caller that must be the admin.
pub struct AdminCaller;

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Admin => Ok(AdminCaller),
            Caller::Tenant(_) => Err(ApiError::Forbidden("only the admin token may do this".into())),
        }
    }
}

/// Tenants by token hash for a short while. What changes a tenant here (its quota) forgets it
/// at once; a token rotated by another process stops working within [`TenantCache::TTL`].
#[derive(Default)]
pub(crate) struct TenantCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (store::Tenant, std::time::Instant)>>,
}

impl TenantCache {
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(2);
    const MAX_ENTRIES: usize = 100_000;

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (store::Tenant, std::time::Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, hash: &str) -> Option<store::Tenant> {
        let entries = self.lock();
        entries.get(hash).filter(|(_, at)| at.elapsed() < Self::TTL).map(|(t, _)| t.clone())
    }

    pub fn put(&self, hash: String, tenant: store::Tenant) {
        let mut entries = self.lock();
        if entries.len() >= Self::MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(hash, (tenant, std::time::Instant::now()));
    }

    /// Forgets every token (after a notice was lost: one may have been revoked).
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    /// Forgets every token of `tenant_id`.
    pub fn forget_tenant(&self, tenant_id: i64) {
        self.lock().retain(|_, (t, _)| t.id != tenant_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_hashes_stable() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), "drome_".len() + 64);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert!(same(&hash_token(&a), &hash_token(&a)));
        assert!(!same(&hash_token(&a), &hash_token(&b)));
    }
}
