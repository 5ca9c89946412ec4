//! Everything `imprintd` serves, put together (also used by tests to run
//! the daemon in-process).

use std::sync::Arc;

use imprint_proto::tls::TlsFiles;
use imprint_proto::v1::{
    account_service_server::AccountServiceServer, guest_service_server::GuestServiceServer,
    host_service_server::HostServiceServer, image_service_server::ImageServiceServer,
    operation_service_server::OperationServiceServer, profile_service_server::ProfileServiceServer,
};
use tonic::transport::server::Router;

use crate::{
    api::{
        accounts::Accounts, guests::Guests, hosts::Hosts, images::Images, operations::Operations,
        profiles::Profiles,
    },
    dispatch::Dispatcher,
};

/// The gRPC services the daemon serves, as reflection lists them.
pub const SERVED: &[&str] = &[
    "imprint.v1.AccountService",
    "imprint.v1.GuestService",
    "imprint.v1.HostService",
    "imprint.v1.ImageService",
    "imprint.v1.OperationService",
    "imprint.v1.ProfileService",
    "grpc.health.v1.Health",
];

/// The router with every service, health and reflection. Nothing starts
/// here: the caller starts the dispatcher's work ([`Dispatcher::start`]).
pub async fn router(d: Arc<Dispatcher>, tls: Option<&TlsFiles>) -> anyhow::Result<Router> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<HostServiceServer<Hosts>>().await;
    health.set_serving::<ImageServiceServer<Images>>().await;
    health.set_serving::<GuestServiceServer<Guests>>().await;
    health.set_serving::<ProfileServiceServer<Profiles>>().await;
    health
        .set_serving::<OperationServiceServer<Operations>>()
        .await;
    // Reflection v1 and v1alpha: grpcurl and older clients ask the latter.
    // The descriptor set holds the agent's API too (its messages are
    // shared): advertise only what this daemon serves.
    let configure = || {
        SERVED.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(imprint_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |b, name| b.with_service_name(*name),
        )
    };
    let reflection = configure().build_v1()?;
    let reflection_alpha = configure().build_v1alpha()?;
    let mut server = tonic::transport::Server::builder();
    if let Some(t) = tls {
        // Users come without certificates (they have tokens); agents show
        // one bound to their host name, or send their host token.
        server = server.tls_config(t.server(true).map_err(anyhow::Error::msg)?)?;
    }
    Ok(server
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(HostServiceServer::new(Hosts::new(d.catalog().clone())))
        .add_service(ImageServiceServer::new(Images::new(d.clone())))
        .add_service(GuestServiceServer::new(Guests::new(d.clone())))
        .add_service(ProfileServiceServer::new(Profiles::new(
            d.catalog().clone(),
        )))
        .add_service(AccountServiceServer::new(Accounts::new(
            d.catalog().clone(),
        )))
        .add_service(OperationServiceServer::new(Operations::new(d))))
}
