//! Weft's `PhysicalExtensionCodec`: encodes [`StageReaderExec`] and
//! [`PartitionSubsetExec`] inside datafusion-proto plan fragments.

use std::sync::Arc;

use arrow::datatypes::Schema;
use datafusion::common::{internal_err, DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::from_proto::{
    parse_physical_sort_exprs, parse_protobuf_partitioning,
};
use datafusion_proto::physical_plan::to_proto::{
    serialize_partitioning, serialize_physical_sort_exprs,
};
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf;
use prost::Message;
use weft_proto::weft_plan_node::Node;
use weft_proto::{PartitionSubsetNode, StageReaderNode, WeftPlanNode};

use crate::exchange::{PartitionSubsetExec, ReaderMode, StageReaderExec};
use crate::flight::ClientPool;

/// Codec for Weft's plan nodes. Readers decoded by it fetch through `clients`.
///
/// Nodes it does not know itself (connector scans) go to an optional
/// extension codec, wrapped as `WeftPlanNode::Extension`.
#[derive(Debug, Clone)]
pub struct WeftCodec {
    clients: Arc<ClientPool>,
    extension: Option<Arc<dyn PhysicalExtensionCodec>>,
}

impl WeftCodec {
    pub fn new(clients: Arc<ClientPool>) -> Self {
        Self {
            clients,
            extension: None,
        }
    }

    /// Encodes and decodes other nodes with `extension`.
    pub fn with_extension(mut self, extension: Arc<dyn PhysicalExtensionCodec>) -> Self {
        self.extension = Some(extension);
        self
    }
}

fn decode_err(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("cannot decode Weft plan node: {e}"))
}

impl PhysicalExtensionCodec for WeftCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let node = WeftPlanNode::decode(buf).map_err(decode_err)?;
        match node.node {
            Some(Node::PartitionSubset(n)) => {
                let [input] = inputs else {
                    return internal_err!(
                        "PartitionSubsetExec expects one input, got {}",
                        inputs.len()
                    );
                };
                let partitions = n.partitions.iter().map(|&p| p as usize).collect();
                Ok(Arc::new(PartitionSubsetExec::try_new(
                    Arc::clone(input),
                    partitions,
                )?))
            }
            Some(Node::StageReader(n)) => {
                let schema_proto =
                    protobuf::Schema::decode(n.schema.as_slice()).map_err(decode_err)?;
                let schema = Arc::new(Schema::try_from(&schema_proto)?);
                let decode_ctx = PhysicalPlanDecodeContext::new(ctx, self);
                let mode = weft_proto::ReaderMode::try_from(n.mode).map_err(decode_err)?;
                let reader = match mode {
                    weft_proto::ReaderMode::Shuffle => {
                        let part = protobuf::Partitioning::decode(n.partitioning.as_slice())
                            .map_err(decode_err)?;
                        let partitioning = parse_protobuf_partitioning(
                            Some(&part),
                            &decode_ctx,
                            &schema,
                            proto_converter,
                        )?
                        .ok_or_else(|| decode_err("missing partitioning"))?;
                        StageReaderExec::shuffle(
                            n.query_id,
                            n.stage_id,
                            schema,
                            partitioning,
                            Arc::clone(&self.clients),
                        )
                    }
                    weft_proto::ReaderMode::Gather => {
                        let sort_nodes = n
                            .ordering
                            .iter()
                            .map(|b| protobuf::PhysicalSortExprNode::decode(b.as_slice()))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(decode_err)?;
                        let sort_exprs = parse_physical_sort_exprs(
                            &sort_nodes,
                            &decode_ctx,
                            &schema,
                            proto_converter,
                        )?;
                        StageReaderExec::gather(
                            n.query_id,
                            n.stage_id,
                            schema,
                            n.partitions as usize,
                            LexOrdering::new(sort_exprs),
                            Arc::clone(&self.clients),
                        )
                    }
                };
                Ok(Arc::new(reader.with_tasks(n.tasks)?))
            }
            Some(Node::Extension(bytes)) => match &self.extension {
                Some(ext) => ext.try_decode(&bytes, inputs, ctx, proto_converter),
                None => internal_err!(
                    "plan contains a connector node but this process has no connectors configured"
                ),
            },
            None => internal_err!("empty Weft plan node"),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let encoded = if let Some(subset) = node.downcast_ref::<PartitionSubsetExec>() {
            Node::PartitionSubset(PartitionSubsetNode {
                partitions: subset.partitions().iter().map(|&p| p as u32).collect(),
            })
        } else if let Some(reader) = node.downcast_ref::<StageReaderExec>() {
            let schema = protobuf::Schema::try_from(reader.schema().as_ref())?.encode_to_vec();
            let props = reader.properties();
            let (mode, partitioning, ordering) = match reader.mode() {
                ReaderMode::Shuffle => (
                    weft_proto::ReaderMode::Shuffle,
                    serialize_partitioning(&props.partitioning, self, proto_converter)?
                        .encode_to_vec(),
                    vec![],
                ),
                ReaderMode::Gather => {
                    let ordering = match props.output_ordering() {
                        Some(o) => {
                            serialize_physical_sort_exprs(o.iter().cloned(), self, proto_converter)?
                                .into_iter()
                                .map(|n| n.encode_to_vec())
                                .collect()
                        }
                        None => vec![],
                    };
                    (weft_proto::ReaderMode::Gather, vec![], ordering)
                }
            };
            Node::StageReader(StageReaderNode {
                query_id: reader.query_id().to_string(),
                stage_id: reader.stage_id(),
                mode: mode as i32,
                tasks: reader.tasks().to_vec(),
                schema,
                partitioning,
                ordering,
                partitions: props.partitioning.partition_count() as u32,
            })
        } else if let Some(ext) = &self.extension {
            let mut bytes = Vec::new();
            ext.try_encode(node, &mut bytes, proto_converter)?;
            Node::Extension(bytes)
        } else {
            return internal_err!("WeftCodec cannot encode {}", node.name());
        };
        WeftPlanNode {
            node: Some(encoded),
        }
        .encode(buf)
        .map_err(decode_err)
    }
}
