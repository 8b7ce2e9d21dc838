//! The consumer: user events from Kafka into Postgres.

pub mod config;
