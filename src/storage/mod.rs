//! The object store behind one repository type. [`layout`] is the only place
//! that builds object keys.

pub mod layout;
pub mod repository;

pub use repository::{Error, ObjectInfo, Repository, retry};
