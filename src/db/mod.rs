//! Database access: the connection pool, migrations and the embedded PostgreSQL launcher.
//! Owns connecting and schema setup; domain SQL lives in each domain module, never here.
pub mod embedded;
mod host;
pub mod pool;
