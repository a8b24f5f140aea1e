pub mod model;
pub mod theory;
