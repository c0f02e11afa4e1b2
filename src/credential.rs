//! The credential keyward holds for its users: the API key (read once into locked memory) and
//! the ChatGPT sign-in (its stores, the issuer client, the token manager that keeps it fresh
//! under the refresh lock). Uses `upstream` to reach the sign-in service, `config` and `secret`;
//! never `access`, `telemetry`, `proxy` or `server`.

pub mod api_key;
pub mod chatgpt;
