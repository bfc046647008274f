//! The reconcile entry of every policy kind that puts jobs on hosts (BackupPolicy,
//! RetentionPolicy, VerifyPolicy): wait for the caches, run `apply` under the finalizer
//! `fleetsnap.io/host-cleanup` (or `cleanup` once the object is being deleted), time it; and
//! the matching error policy.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use kube::core::NamespaceResourceScope;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info_span, warn};

use super::Context;
use super::error::Error;

/// Held while units may exist on hosts; removed once every host was cleaned.
pub const FINALIZER: &str = "fleetsnap.io/host-cleanup";

/// A policy kind reconciled under [`FINALIZER`].
pub trait Finalized:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The API kind, for spans, metrics and backoff keys.
    const KIND: &'static str;
    /// Makes the hosts and the status match the spec.
    fn apply(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send;
    /// Takes the policy's job off every host before the object may go.
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send;
}

pub async fn reconcile<P: Finalized>(policy: Arc<P>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = policy.namespace().ok_or(Error::NoNamespace)?;
    let span =
        info_span!("reconcile", kind = P::KIND, namespace = %ns, policy = %policy.name_any());
    let api: Api<P> = Api::namespaced(ctx.client.clone(), &ns);
    let result = async {
        debug!("reconcile started");
        // Planning against half-filled caches would treat hosts as deselected.
        ctx.caches_ready().await;
        debug!("caches ready");
        finalizer(&api, FINALIZER, policy, |event| async {
            match event {
                FinalizerEvent::Apply(p) => p.apply(&ctx).await,
                FinalizerEvent::Cleanup(p) => p.cleanup(&ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    }
    .instrument(span)
    .await;
    ctx.metrics
        .reconcile_took(P::KIND, started.elapsed().as_secs_f64());
    result
}

pub fn error_policy<P: Finalized>(policy: Arc<P>, err: &Error, ctx: Arc<Context>) -> Action {
    let (attempt, action) = ctx.reconcile_failed(P::KIND, policy.as_ref(), err);
    warn!(policy = %policy.name_any(), error = %err, attempt, "reconcile failed");
    action
}
