//! SSH transport on russh: one connection per host, host keys checked against known_hosts,
//! commands, uploads and HTTP probes through the node.
