//! The toolkit every domain's resolvers share: reading the context, role guards, DataLoaders,
//! batches shared by a list's objects, cursor pagination, eager resolution of objects a
//! response holds many of, and the query limits the schema enforces. The schema itself is
//! assembled in [`crate::schema`] and served by [`crate::http`]; nothing here imports a
//! domain's GraphQL.

pub mod context;
pub mod eager;
pub mod guards;
pub mod limits;
pub mod loaders;
pub mod pagination;
pub mod selection;
pub mod siblings;

pub use context::{parse_id, request_context, state};
