#![no_std]
// Lets `cargo check` on the host type-check this crate's dependencies; the programs are in main.rs.
