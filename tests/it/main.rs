//! The integration suite: one test binary (a fresh build links it once), a module per concern.
//! Every module starts the whole server in-process on 127.0.0.1:0 against local upstreams;
//! `real_clients` drives dockerd, containerd, skopeo and curl through the built binary.

mod access_control;
mod admin;
mod api_errors;
mod auth;
mod common;
mod crash;
mod eviction;
mod eviction_replicas;
mod fault_proxy_selftest;
mod faults;
mod freshness;
mod full_disk;
mod gc;
mod graceful_shutdown;
mod grafana_dashboard;
mod hostile_clients;
mod hostile_upstream;
mod integrity;
mod logging;
mod namespaces;
mod offline;
mod operations;
mod prewarm;
mod pull;
mod real_clients;
mod registries;
mod repository_prefix;
mod s3_replicas;
mod shared_tasks;
mod single_flight;
mod startup;
mod status_page;
mod storage_contract;
mod upstream_errors;
