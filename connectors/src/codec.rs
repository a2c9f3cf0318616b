//! Encodes [`RemoteScanExec`] inside plan fragments (as a `WeftCodec` extension).

use std::sync::Arc;

use arrow::datatypes::Schema;
use datafusion::common::{internal_err, DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf;
use prost::Message;
use weft_proto::RemoteScanNode;

use crate::remote_scan::{RemoteScanExec, RemoteScanSpec};
use crate::Connectors;

/// Encodes remote scans by catalog name; decodes them against this process's
/// own sources, so connection settings and passwords never travel.
#[derive(Debug)]
pub struct ConnectorCodec {
    connectors: Connectors,
}

impl ConnectorCodec {
    pub fn new(connectors: Connectors) -> Self {
        Self { connectors }
    }
}

fn codec_err(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("cannot decode remote scan: {e}"))
}

impl PhysicalExtensionCodec for ConnectorCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return internal_err!("RemoteScanExec has no inputs, got {}", inputs.len());
        }
        let node = RemoteScanNode::decode(buf).map_err(codec_err)?;
        let Some(source) = self.connectors.source(&node.catalog) else {
            return Err(DataFusionError::Plan(format!(
                "catalog \"{}\" ({}) is not configured in this process's catalog file; give the coordinator and every worker the same catalog file",
                node.catalog, node.kind
            )));
        };
        if source.kind() != node.kind {
            return Err(DataFusionError::Plan(format!(
                "catalog \"{}\" is a {} catalog here but {} on the coordinator; give every process the same catalog file",
                node.catalog,
                source.kind(),
                node.kind
            )));
        }
        let schema_proto = protobuf::Schema::decode(node.schema.as_slice()).map_err(codec_err)?;
        let schema = Arc::new(Schema::try_from(&schema_proto)?);
        let spec = RemoteScanSpec {
            relation: node.relation,
            schema,
            wire_types: node.wire_types,
            queries: node.queries,
            snapshot: (!node.snapshot.is_empty()).then_some(node.snapshot),
            split_method: node.split_method,
            split_payloads: node.split_payloads,
        };
        Ok(Arc::new(RemoteScanExec::try_new(source, spec)?))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(scan) = node.downcast_ref::<RemoteScanExec>() else {
            return internal_err!("ConnectorCodec cannot encode {}", node.name());
        };
        let spec = scan.spec();
        RemoteScanNode {
            catalog: scan.source().catalog().to_string(),
            kind: scan.source().kind().to_string(),
            schema: protobuf::Schema::try_from(spec.schema.as_ref())?.encode_to_vec(),
            wire_types: spec.wire_types,
            queries: spec.queries,
            snapshot: spec.snapshot.unwrap_or_default(),
            relation: spec.relation,
            split_method: spec.split_method,
            split_payloads: spec.split_payloads,
        }
        .encode(buf)
        .map_err(codec_err)
    }
}
