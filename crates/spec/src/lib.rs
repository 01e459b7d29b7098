//! The faultline/v1 experiment model.
