//! One site's API as the federation calls it: as the site's admin (its report, its federation
//! lease, tenants' tokens) and as a tenant (its jobs).

use crate::config::SiteConfig;
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Why a call to a site did not do what it asked.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SiteError {
    /// No answer, a timeout, or the site could not serve (5xx, 429): try again, or elsewhere.
    #[error("site {site} did not answer: {message}")]
    Unreachable { site: String, message: String },
    /// The site answered no to this request (4xx): the same request will get the same answer.
    #[error("site {site} refused: {message}")]
    Refused { site: String, status: u16, body: Option<Box<api::ErrorBody>>, message: String },
}

impl SiteError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, SiteError::Unreachable { .. })
    }
}

#[derive(Clone, Debug)]
pub struct SiteClient {
    pub name: String,
    url: String,
    admin_token: String,
    http: reqwest::Client,
}

impl SiteClient {
    pub fn new(config: &SiteConfig, timeout: Duration) -> Result<SiteClient, SiteError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| SiteError::Unreachable { site: config.name.clone(), message: e.to_string() })?;
        Ok(SiteClient {
            name: config.name.clone(),
            url: config.url.clone(),
            admin_token: config.admin_token.clone(),
            http,
        })
    }

    async fn call<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, SiteError> {
        let unreachable = |message: String| SiteError::Unreachable { site: self.name.clone(), message };
        let response = request.send().await.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return response.json::<T>().await.map_err(|e| unreachable(format!("a bad answer: {e}")));
        }
        let text = response.text().await.unwrap_or_default();
        let body: Option<Box<api::ErrorBody>> = serde_json::from_str(&text).ok();
        let message = body.as_ref().map_or_else(|| format!("{status}: {text}"), |b| b.error.message.clone());
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
        {
            return Err(unreachable(format!("{status}: {message}")));
        }
        Err(SiteError::Refused { site: self.name.clone(), status: status.as_u16(), body, message })
    }

    fn get(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.url)).bearer_auth(token)
    }

    fn post<B: Serialize>(&self, path: &str, token: &str, body: &B) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.url)).bearer_auth(token).json(body)
    }

    /// The site's report of itself (its server may hold several sites of a fleet).
    pub async fn sites(&self) -> Result<Vec<api::Site>, SiteError> {
        self.call(self.get("/v1/sites", &self.admin_token)).await
    }

    /// Federated jobs may start at the site for `lease_ms` more, on its own clock, those of
    /// `grant` (its ids) among them; the answer says which it would start but may not yet.
    pub async fn renew_lease(&self, lease_ms: u64, grant: Vec<i64>) -> Result<api::FederationLeaseState, SiteError> {
        let body = api::FederationLease { lease_ms, grant };
        let request =
            self.http.put(format!("{}/v1/federation/lease", self.url)).bearer_auth(&self.admin_token).json(&body);
        self.call(request).await
    }

    /// A token to act as `tenant` at the site: the tenant is made there, or, if it exists (made
    /// by an earlier try whose token was not kept), its token is rotated.
    pub async fn tenant_token(&self, tenant: &str) -> Result<String, SiteError> {
        let new = api::NewTenant {
            name: tenant.to_string(),
            gpu_quota: None,
            cpu_milli_quota: None,
            memory_mib_quota: None,
            token_ttl_s: None,
            max_priority: None,
        };
        match self.call::<api::TenantCreated>(self.post("/v1/tenants", &self.admin_token, &new)).await {
            Ok(created) => Ok(created.token),
            Err(SiteError::Refused { status: 409, .. }) => {
                let rotation = api::TokenRotation::default();
                let path = format!("/v1/tenants/{tenant}/token");
                let created: api::TenantCreated = self.call(self.post(&path, &self.admin_token, &rotation)).await?;
                Ok(created.token)
            }
            Err(e) => Err(e),
        }
    }

    /// Submits a job as the tenant, with the federation's idempotency key: a retry of the same
    /// forward finds the job the first made.
    pub async fn submit(&self, token: &str, spec: &api::JobSpec, key: &str) -> Result<api::Job, SiteError> {
        self.call(self.post("/v1/jobs", token, spec).header("idempotency-key", key)).await
    }

    pub async fn job(&self, token: &str, id: i64) -> Result<api::Job, SiteError> {
        self.call(self.get(&format!("/v1/jobs/{id}"), token)).await
    }

    pub async fn cancel(&self, token: &str, id: i64) -> Result<api::Job, SiteError> {
        self.call(self.post(&format!("/v1/jobs/{id}/cancel"), token, &serde_json::json!({}))).await
    }

    /// The tenant's jobs in `state` at the site, every page.
    pub async fn jobs_in(&self, token: &str, state: api::JobState) -> Result<Vec<api::Job>, SiteError> {
        let mut out = Vec::new();
        let mut before: Option<i64> = None;
        loop {
            let mut path = format!("/v1/jobs?state={}&limit={}", state.as_str(), api::limits::MAX_PAGE);
            if let Some(b) = before {
                path.push_str(&format!("&before={b}"));
            }
            let page: api::JobList = self.call(self.get(&path, token)).await?;
            out.extend(page.jobs);
            match page.next_before {
                Some(b) => before = Some(b),
                None => return Ok(out),
            }
        }
    }
}
