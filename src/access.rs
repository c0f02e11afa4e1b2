//! Who may use keyward: who the peer of a connection is, as the kernel says (SO_PEERCRED,
//! sock_diag), the policy applied to it once at accept, and the client tokens a request may have
//! to carry. Uses `credential` (the home's private-file checks), `config` and `secret`.

pub mod clients;
pub mod gate;
pub mod peer;
