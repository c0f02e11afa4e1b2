//! Who may use keyward: who the peer of a connection is, as the kernel says (SO_PEERCRED,
//! sock_diag), the policy applied to it once at accept, and the client tokens a request may have
//! to carry, and who created each stored response ([`owners`]). Uses `credential` (the home's
//! private-file checks), `upstream` (the state database), `config` and `secret`.

pub mod client_token;
pub mod clients;
pub mod gate;
pub mod owners;
pub mod owners_file;
pub mod ownership;
pub mod peer;
pub mod token_store;
