//! What SPDK answers, method by method, when a request's params don't decode (a key
//! missing, unknown, repeated or of the wrong type): `spdk_json_decode_object` failed, and
//! each handler picks its own code and message for that. Most say -32603 "internal error";
//! some modules chose -32602 or even -32700. Scripts written against SPDK compare these
//! codes, so we give the same ones (read from SPDK's RPC handlers, v24.09 era; the survey
//! is in the project's shared notes, `rpc_decode_codes.md`).
//!
//! The message starts with SPDK's text; what is wrong follows it (SPDK writes that only
//! to its log; a client is better served seeing it).

use crate::codes::{INTERNAL_ERROR, INVALID_PARAMS, PARSE_ERROR};

const DECODE_FAILED: &str = "spdk_json_decode_object failed";

/// The JSON-RPC code and message SPDK answers when `method`'s params don't decode.
pub fn decode_error(method: &str) -> (i32, &'static str) {
    match method {
        "accel_assign_opc"
        | "accel_crypto_key_create"
        | "accel_crypto_key_destroy"
        | "accel_crypto_keys_get"
        | "accel_set_options"
        | "bdev_raid_create"
        | "bdev_raid_delete"
        | "bdev_raid_get_bdevs"
        | "bdev_raid_remove_base_bdev"
        | "bdev_raid_set_options" => (PARSE_ERROR, DECODE_FAILED),
        "bdev_crypto_create" => (
            PARSE_ERROR,
            "Failed to decode crypto disk create parameters.",
        ),
        "bdev_examine" | "iobuf_set_options" => (INVALID_PARAMS, DECODE_FAILED),
        "bdev_crypto_delete"
        | "bdev_set_options"
        | "spdk_kill_instance"
        | "rpc_get_methods"
        | "framework_set_scheduler"
        | "iscsi_set_options"
        | "nvmf_set_config"
        | "nvmf_set_crdt"
        | "nvmf_set_max_subsystems"
        | "sock_impl_set_options"
        | "sock_set_default_impl" => (INVALID_PARAMS, "Invalid parameters"),
        "framework_get_config" => (INVALID_PARAMS, "Invalid arguments"),
        "bdev_nvme_reset_controller" | "bdev_nvme_set_hotplug" => {
            (INVALID_PARAMS, "Invalid argument")
        }
        // The rest of SPDK's handlers (aio, uring, malloc, null, passthru, error, delay,
        // nvme, raid add_base_bdev, the bdev layer's iostat, QoS and histogram methods,
        // log_set_*), and methods of our own.
        _ => (INTERNAL_ERROR, DECODE_FAILED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_spdk_handlers() {
        assert_eq!(decode_error("bdev_malloc_create"), (-32603, DECODE_FAILED));
        assert_eq!(decode_error("bdev_raid_create"), (-32700, DECODE_FAILED));
        assert_eq!(
            decode_error("bdev_raid_add_base_bdev"),
            (-32603, DECODE_FAILED)
        );
        assert_eq!(decode_error("bdev_examine"), (-32602, DECODE_FAILED));
        assert_eq!(
            decode_error("spdk_kill_instance"),
            (-32602, "Invalid parameters")
        );
        assert_eq!(
            decode_error("bdev_nvme_set_hotplug"),
            (-32602, "Invalid argument")
        );
    }
}
