//! Every route of the tenant and admin API, with any path segment, query and body, as the admin,
//! a tenant, nobody or a wrong token, against a real server: never a 5xx or a dropped connection,
//! and every refusal carries a message.
#![no_main]

use drome_fuzz::{ADMIN, Harness, encode};
use libfuzzer_sys::fuzz_target;

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Nothing,
    Body,
    Query,
}

/// Method, path (`{}` stands for the fuzzed segment) and what else the input fills in.
const ROUTES: &[(&str, &str, Part)] = &[
    ("POST", "/v1/tenants", Part::Body),
    ("GET", "/v1/tenants", Part::Nothing),
    ("PUT", "/v1/tenants/{}/quota", Part::Body),
    ("POST", "/v1/tenants/{}/token", Part::Body),
    ("DELETE", "/v1/tenants/{}/token", Part::Nothing),
    ("DELETE", "/v1/tenants/{}", Part::Nothing),
    ("GET", "/v1/audit", Part::Query),
    ("GET", "/v1/quota", Part::Nothing),
    ("POST", "/v1/jobs", Part::Body),
    ("GET", "/v1/jobs", Part::Query),
    ("GET", "/v1/jobs/{}", Part::Nothing),
    ("POST", "/v1/jobs/{}/cancel", Part::Nothing),
    ("GET", "/v1/jobs/{}/logs", Part::Query),
    ("GET", "/v1/nodes", Part::Nothing),
    ("GET", "/v1/sites", Part::Nothing),
    ("PUT", "/v1/sites/{}/gpu-power-cap", Part::Body),
    ("PUT", "/v1/nodes/{}/drain", Part::Body),
    ("DELETE", "/v1/nodes/{}/drain", Part::Nothing),
    ("POST", "/v1/nodes/{}/remove", Part::Nothing),
    ("POST", "/v1/join-tokens", Part::Body),
    ("GET", "/v1/join-tokens", Part::Nothing),
    ("DELETE", "/v1/join-tokens/{}", Part::Nothing),
    ("GET", "/v1/cluster", Part::Nothing),
    ("GET", "/healthz", Part::Nothing),
    ("POST", "/v1/jobs", Part::Nothing),
    ("GET", "/v1/no-such-route/{}", Part::Query),
];

fuzz_target!(|data: &[u8]| {
    let [route, who, rest @ ..] = data else { return };
    let (method, template, part) = ROUTES[usize::from(*route) % ROUTES.len()];
    let h = Harness::get();
    let token = match who % 4 {
        0 => Some(ADMIN),
        1 => Some(h.tenant.as_str()),
        2 => None,
        _ => Some("not-a-token"),
    };
    let (segment, rest) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) if template.contains("{}") => (&rest[..i], &rest[i + 1..]),
        _ => (&[][..], rest),
    };
    // The harness's own tenants stay: removing them or changing their tokens would end the run.
    if template.starts_with("/v1/tenants/{}") && (segment == b"acme" || segment == b"other") {
        return;
    }
    // A log request may follow a run's output until it ends: not in a fuzzed request.
    if template.ends_with("/logs") && rest.windows(6).any(|w| w.eq_ignore_ascii_case(b"follow")) {
        return;
    }
    let mut path = template.replace("{}", &encode(segment, b""));
    let body = match part {
        Part::Body => Some(rest.to_vec()),
        Part::Query => {
            path = format!("{path}?{}", encode(rest, b"=&"));
            None
        }
        Part::Nothing => None,
    };
    h.check(method, &path, token, body);
});
