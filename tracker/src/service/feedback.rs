//! `FeedbackService`: JobClients subscribe to the results of the jobs their node group
//! submitted and acknowledge them.

use std::sync::Arc;

use lts_core::proto::{self, feedback_client_message, feedback_service_server::FeedbackService};
use lts_core::{now_ms, validate};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{BoxStream, TrackerCore, invalid_argument};
use crate::admission::first_message;
use crate::auth::Need;
use crate::registry::{NodeInfo, Role};

/// `FeedbackService`.
#[derive(Debug, Clone)]
pub struct FeedbackApi(pub Arc<TrackerCore>);

#[tonic::async_trait]
impl FeedbackService for FeedbackApi {
    type SubscribeStream = BoxStream<proto::Feedback>;

    async fn subscribe(
        &self,
        request: Request<Streaming<proto::FeedbackClientMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let core = self.0.clone();
        let (who, presented) = core.auth.authenticate(&request)?;
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let admitted = core.subscriber_streams.admit()?;
        let mut inbound = request.into_inner();
        let first = first_message(&mut inbound, core.hello_timeout, "FeedbackSubscribe").await?;
        let sub = match first {
            Some(proto::FeedbackClientMessage {
                msg: Some(feedback_client_message::Msg::Subscribe(s)),
            }) => s,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on a Subscribe stream must be FeedbackSubscribe",
                ));
            }
        };
        let mut v = Vec::new();
        validate::check_node_group(
            "subscribe.submit_node_group",
            &sub.submit_node_group,
            &mut v,
        );
        if !v.is_empty() {
            return Err(invalid_argument(&validate::Violations(v)));
        }
        who.require(
            Need::Submitter(&sub.submit_node_group),
            "receive this node group's feedback",
        )?;
        let (tx, rx) = mpsc::unbounded_channel();
        let group = sub.submit_node_group;
        let identity = if sub.identity.is_empty() {
            peer.clone()
        } else {
            sub.identity
        };
        let ended_tx = tx.clone();
        let id = core.feedback.subscribe(&group, tx);
        if core.register_peers {
            let _ = core
                .registry
                .register(NodeInfo {
                    role: Role::JobClient,
                    identity: identity.clone(),
                    node_group: group.clone(),
                    address: peer,
                    threads: 0,
                    version: String::new(),
                    since_ms: now_ms(),
                })
                .await;
        }
        tracing::info!(submit_node_group = %group, identity = %identity, "feedback subscriber connected");
        tokio::spawn(async move {
            let _admitted = admitted;
            // Revoked credentials end the subscription within a reload of the rules.
            let (auth, granted) = (core.auth.clone(), group.clone());
            let revoked = auth.revoked(
                &presented,
                Need::Submitter(&granted),
                "receive this node group's feedback",
            );
            tokio::pin!(revoked);
            loop {
                let msg = tokio::select! {
                    m = inbound.next() => m,
                    _ = core.shutdown.cancelled() => break,
                    status = &mut revoked => {
                        let _ = ended_tx.send(Err(status));
                        break;
                    }
                };
                let Some(Ok(msg)) = msg else { break };
                if let Some(feedback_client_message::Msg::Ack(a)) = msg.msg {
                    core.feedback.ack(&group, id, a.feedback_ids).await;
                }
            }
            core.feedback.unsubscribe(&group, id);
            if core.register_peers {
                let _ = core.registry.unregister(Role::JobClient, &identity).await;
            }
            tracing::info!(submit_node_group = %group, identity = %identity, "feedback subscriber gone");
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}
