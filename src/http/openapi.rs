//! The OpenAPI 3 document of the API (`GET /api/v1/openapi.json`), written by
//! hand beside the serde types of `crate::api` it describes. Unknown fields in
//! a body are ignored, as serde does, so no schema forbids additional
//! properties. `tests/api.rs` walks every operation against the running
//! server and checks its answers against these schemas; schemathesis does the
//! same as an independent client (`tests/api_schemathesis.rs`).

use serde_json::{json, Map, Value};

use crate::api::PREFIX;

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn string(description: &str) -> Value {
    json!({ "type": "string", "description": description })
}

fn time(description: &str) -> Value {
    json!({ "type": "string", "format": "date-time", "description": description })
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": properties })
}

fn body(schema: &str) -> Value {
    json!({
        "required": true,
        "content": { "application/json": { "schema": reference(schema) } }
    })
}

fn answer(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": reference(schema) } }
    })
}

/// Error answers by status; every one carries an `ApiErrorBody`.
const ERRORS: &[(&str, &str)] = &[
    ("400", "the body or a parameter is not what this call takes"),
    (
        "401",
        "no token, or an unknown, expired or revoked one: sign in with `passport login <server url>`",
    ),
    ("403", "the policy does not allow this"),
    ("404", "no such request among the caller's own, or no such sign-in"),
    ("409", "the request is not in a state that allows this"),
    ("410", "the sign-in expired, was cancelled, or its token was handed out already"),
    ("413", "the body is over 64 KiB"),
    ("415", "the body is not application/json"),
    ("429", "too many calls: the message says how long to wait"),
    ("503", "AWS or the database cannot be reached right now"),
];

struct Op {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    authenticated: bool,
    request_id: bool,
    query_state: bool,
    /// `?instance=i-…`: credentials for one instance only.
    query_instance: bool,
    body: Option<&'static str>,
    ok: (&'static str, &'static str, Option<&'static str>),
    errors: &'static [&'static str],
}

const AUTH: &[&str] = &["401", "429", "503"];

/// The answer of a call that acts on a request: the request and chat's answer.
const ACTED: (&str, &str, Option<&str>) = (
    "200",
    "the request, with chat's answer in `message`",
    Some("RequestView"),
);

/// Each operation is built from what most are (authenticated, without
/// parameters or a body) and says only how it differs.
impl Op {
    const fn new(
        method: &'static str,
        path: &'static str,
        id: &'static str,
        summary: &'static str,
    ) -> Op {
        Op {
            method,
            path,
            id,
            summary,
            authenticated: true,
            request_id: false,
            query_state: false,
            query_instance: false,
            body: None,
            ok: ("200", "", None),
            errors: AUTH,
        }
    }

    /// Made without a token.
    const fn public(self) -> Op {
        Op {
            authenticated: false,
            ..self
        }
    }

    /// On the request in the path (`{id}`).
    const fn on_request(self) -> Op {
        Op {
            request_id: true,
            ..self
        }
    }

    /// With `?state=`.
    const fn by_state(self) -> Op {
        Op {
            query_state: true,
            ..self
        }
    }

    /// With `?instance=`.
    const fn for_instance(self) -> Op {
        Op {
            query_instance: true,
            ..self
        }
    }

    /// Taking a JSON body of this schema.
    const fn taking(self, schema: &'static str) -> Op {
        Op {
            body: Some(schema),
            ..self
        }
    }

    /// Answering with this status, description and schema when it works.
    const fn answers(self, ok: (&'static str, &'static str, Option<&'static str>)) -> Op {
        Op { ok, ..self }
    }

    /// Answering these error statuses.
    const fn failing(self, errors: &'static [&'static str]) -> Op {
        Op { errors, ..self }
    }
}
const REQUEST_ERRORS: &[&str] = &["400", "401", "403", "404", "409", "429", "503"];
const BODY_ERRORS: &[&str] = &[
    "400", "401", "403", "404", "409", "413", "415", "429", "503",
];

const OPERATIONS: &[Op] = &[
    Op::new("post", "/login", "startLogin", "Start signing in: a one-time code to type in chat (`/passport login CODE`)")
        .public()
        .taking("LoginStart")
        .answers(("201", "the sign-in started", Some("LoginStarted")))
        .failing(&["400", "413", "415", "429", "503"]),
    Op::new("post", "/login/poll", "pollLogin", "Whether the sign-in was confirmed in chat; the token, once")
        .public()
        .taking("LoginPoll")
        .answers(("200", "pending, or confirmed with the token", Some("LoginStatus")))
        .failing(&["400", "404", "410", "413", "415", "503"]),
    Op::new("post", "/logout", "logout", "End the token this call is made with")
        .answers(("204", "the token no longer works", None))
        .failing(AUTH),
    Op::new("get", "/me", "me", "Who the token belongs to")
        .answers(("200", "the caller", Some("Me")))
        .failing(AUTH),
    Op::new("get", "/requests", "listRequests", "The caller's own requests, most recent first")
        .by_state()
        .answers(("200", "the caller's requests", Some("RequestList")))
        .failing(&["400", "401", "429", "503"]),
    Op::new("post", "/requests", "createRequest", "Ask for access, as `/passport request` does: the same policy, checks and card for approvers")
        .taking("NewRequest")
        .answers(("201", "the request, with chat's answer in `message`", Some("RequestView")))
        .failing(&["400", "401", "403", "409", "413", "415", "429", "503"]),
    Op::new("get", "/requests/{id}", "showRequest", "One of the caller's requests")
        .on_request()
        .answers(("200", "the request", Some("RequestView")))
        .failing(&["401", "404", "429", "503"]),
    Op::new("post", "/requests/{id}/extend", "extendRequest", "Add time to active access, up to the maximum")
        .on_request()
        .taking("Extend")
        .answers(ACTED)
        .failing(BODY_ERRORS),
    Op::new("post", "/requests/{id}/complete", "completeRequest", "Finish early: access is removed at once")
        .on_request()
        .answers(ACTED)
        .failing(REQUEST_ERRORS),
    Op::new("post", "/requests/{id}/cancel", "cancelRequest", "Withdraw a pending request")
        .on_request()
        .answers(ACTED)
        .failing(REQUEST_ERRORS),
    Op::new("post", "/requests/{id}/certificate", "issueCertificate", "An SSH certificate for a public key, valid until the access ends")
        .on_request()
        .taking("CertificateRequest")
        .answers(("200", "the certificate", Some("CertificateIssued")))
        .failing(BODY_ERRORS),
    Op::new("post", "/requests/{id}/credentials", "issueCredentials", "AWS credentials that open Session Manager sessions only to this request's instances (or the one named)")
        .on_request()
        .for_instance()
        .answers(("200", "the credentials", Some("Credentials")))
        .failing(REQUEST_ERRORS),
];

/// Where the answer of one operation leads: the sign-in's poll, and what
/// can be done with a request just created.
fn links(op: &Op) -> Option<Value> {
    match op.id {
        "startLogin" => Some(json!({
            "pollLogin": {
                "operationId": "pollLogin",
                "requestBody": {
                    "login_id": "$response.body#/login_id",
                    "poll_secret": "$response.body#/poll_secret",
                },
            },
        })),
        "createRequest" => {
            let mut links = Map::new();
            for target in [
                "showRequest",
                "extendRequest",
                "completeRequest",
                "cancelRequest",
                "issueCertificate",
                "issueCredentials",
            ] {
                links.insert(
                    target.into(),
                    json!({
                        "operationId": target,
                        "parameters": { "id": "$response.body#/id" },
                    }),
                );
            }
            Some(Value::Object(links))
        }
        _ => None,
    }
}

fn operation(op: &Op) -> Value {
    let mut responses = Map::new();
    let (status, description, schema) = op.ok;
    let mut ok = match schema {
        Some(s) => answer(description, s),
        None => json!({ "description": description }),
    };
    if let Some(links) = links(op) {
        ok["links"] = links;
    }
    responses.insert(status.into(), ok);
    for code in op.errors {
        let text = ERRORS
            .iter()
            .find(|(c, _)| c == code)
            .map(|(_, t)| *t)
            .unwrap_or("an error");
        responses.insert((*code).into(), answer(text, "ApiErrorBody"));
    }
    let mut parameters = Vec::new();
    if op.request_id {
        parameters.push(json!({
            "name": "id", "in": "path", "required": true,
            "description": "the request, `AR-n` (or `n`)",
            "schema": { "type": "string", "example": "AR-12" }
        }));
    }
    if op.query_state {
        parameters.push(json!({
            "name": "state", "in": "query", "required": false,
            "description": "only requests in this state",
            "schema": { "type": "string", "enum": STATES }
        }));
    }
    if op.query_instance {
        parameters.push(json!({
            "name": "instance", "in": "query", "required": false,
            "description": "only this instance of the request (the client names the one it connects to)",
            "schema": { "type": "string", "pattern": "^i-[0-9a-f]{8}([0-9a-f]{9})?$", "example": "i-0123456789abcdef0" }
        }));
    }
    let mut v = json!({
        "operationId": op.id,
        "summary": op.summary,
        "responses": responses,
    });
    if !parameters.is_empty() {
        v["parameters"] = Value::Array(parameters);
    }
    if let Some(b) = op.body {
        v["requestBody"] = body(b);
    }
    v["security"] = if op.authenticated {
        json!([{ "bearer": [] }])
    } else {
        json!([])
    };
    v
}

const STATES: &[&str] = &[
    "pending",
    "approved",
    "provisioning",
    "active",
    "completed",
    "expired",
    "revoked",
    "denied",
    "cancelled",
    "approval_timed_out",
    "failed",
];

fn schemas() -> Value {
    json!({
        "ApiErrorBody": object(&["error"], json!({
            "error": string("what was wrong and what to do"),
        })),
        "LoginStart": object(&["host", "client"], json!({
            "host": { "type": "string", "minLength": 1, "maxLength": 100, "description": "the client machine's host name, shown before confirming" },
            "client": { "type": "string", "minLength": 1, "maxLength": 100, "description": "`passport/<version>`" },
        })),
        "LoginStarted": object(
            &["login_id", "poll_secret", "code", "expires_at", "poll_interval_seconds"],
            json!({
                "login_id": string("identifies this sign-in when polling"),
                "poll_secret": string("known only to the terminal; every poll carries it"),
                "code": string("what the person types: `/passport login CODE`"),
                "expires_at": time("when the code stops working"),
                "poll_interval_seconds": { "type": "integer", "minimum": 0 },
            }),
        ),
        "LoginPoll": object(&["login_id", "poll_secret"], json!({
            "login_id": { "type": "string" },
            "poll_secret": { "type": "string" },
        })),
        "LoginStatus": {
            "oneOf": [
                object(&["status", "expires_at"], json!({
                    "status": { "type": "string", "enum": ["pending"] },
                    "expires_at": time("when the code stops working"),
                })),
                object(&["status", "token", "expires_at", "user"], json!({
                    "status": { "type": "string", "enum": ["confirmed"] },
                    "token": string("the API token (`pp_…`), handed out this once"),
                    "expires_at": time("when the token stops working"),
                    "user": reference("Me"),
                })),
            ],
            "discriminator": { "propertyName": "status" },
        },
        "Me": object(&["id", "handle", "surface", "token_expires_at"], json!({
            "id": string("the chat user id"),
            "handle": { "type": "string" },
            "surface": { "type": "string", "enum": ["slack", "discord"] },
            "token_expires_at": time("when the token stops working"),
        })),
        "NewRequest": object(&["instances", "duration", "ticket"], json!({
            "instances": { "type": "array", "items": { "type": "string", "example": "i-0123456789abcdef0" } },
            "duration": string("e.g. 30m, 2h, 1h30m; empty for the default"),
            "ticket": string("the ticket this work belongs to"),
            "reason": { "type": "string", "nullable": true },
        })),
        "Extend": object(&["duration"], json!({
            "duration": string("how much more, e.g. 30m or 1h"),
        })),
        "InstanceView": object(&["id", "platform", "status"], json!({
            "id": { "type": "string" },
            "name": { "type": "string" },
            "platform": { "type": "string", "enum": ["linux", "windows"] },
            "status": { "type": "string", "enum": ["granted", "pending", "failed", "removed"] },
        })),
        "Allows": object(&["ssh", "port_forwarding", "remote_port_forwarding"], json!({
            "ssh": { "type": "boolean" },
            "port_forwarding": { "type": "boolean" },
            "remote_port_forwarding": { "type": "boolean" },
        })),
        "RequestView": object(
            &["id", "state", "username", "instances", "duration", "ticket", "created_at", "allows"],
            json!({
                "id": string("`AR-n`"),
                "state": { "type": "string", "enum": STATES },
                "username": string("the short-lived user on the instances"),
                "instances": { "type": "array", "items": reference("InstanceView") },
                "duration": { "type": "string" },
                "ticket": { "type": "string" },
                "reason": { "type": "string" },
                "created_at": time("when it was asked for"),
                "expires_at": time("when the access ends"),
                "allows": reference("Allows"),
                "message": string("chat's answer to the command that produced this view"),
            }),
        ),
        "RequestList": object(&["requests"], json!({
            "requests": { "type": "array", "items": reference("RequestView") },
        })),
        "CertificateRequest": object(&["public_key"], json!({
            "public_key": string("an OpenSSH public key line"),
        })),
        "CertificateIssued": object(&["certificate", "principal", "serial", "valid_before"], json!({
            "certificate": string("the OpenSSH certificate line"),
            "principal": string("the user to log in as"),
            "serial": { "type": "integer", "minimum": 0 },
            "valid_before": time("when the certificate stops working"),
        })),
        "Credentials": object(
            &["access_key_id", "secret_access_key", "session_token", "expiration", "region", "access_ends_at"],
            json!({
                "access_key_id": { "type": "string" },
                "secret_access_key": { "type": "string" },
                "session_token": { "type": "string" },
                "expiration": time("when AWS stops honouring them"),
                "region": { "type": "string" },
                "access_ends_at": time("the access's end: stop renewing here"),
            }),
        ),
    })
}

/// The document, with every path under [`PREFIX`].
pub fn document() -> Value {
    let mut paths = Map::new();
    for op in OPERATIONS {
        let entry = paths
            .entry(format!("{PREFIX}{}", op.path))
            .or_insert_with(|| json!({}));
        entry[op.method] = operation(op);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Passport API",
            "version": "1",
            "description": "Just-in-time access to EC2 instances for the `passport` client. Sign in with `passport login <server url>`; every other call carries the token as `Authorization: Bearer pp_…`.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "the token from `passport login`" },
            },
            "schemas": schemas(),
        },
    })
}
