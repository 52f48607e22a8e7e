//! End-to-end tests of the whole system on one machine: the scaling service
//! with the `local` provider starting real host-service processes, real
//! PostgreSQL and Docker, and a client that does what client apps do.
//! (The local provider and these tests are the next step; see the README.)
