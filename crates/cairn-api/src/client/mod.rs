//! The client-server API (`/_matrix/client`).

mod account;
mod devices;
mod discovery;
mod keys;
mod rooms;
mod sync;
mod user_data;

use axum::Router;
use axum::routing::{get, post, put};

use crate::AppState;

pub(crate) fn router() -> Router<AppState> {
    // Each endpoint under v3, and under r0 for clients that still use the old prefix.
    let versioned = Router::new()
        .route("/register", post(account::register))
        .route("/register/available", get(account::username_available))
        .route("/login", get(account::login_flows).post(account::login))
        .route("/logout", post(account::logout))
        .route("/logout/all", post(account::logout_all))
        .route("/account/whoami", get(account::whoami))
        .route("/devices", get(devices::list))
        .route(
            "/devices/{device_id}",
            get(devices::get)
                .put(devices::rename)
                .delete(devices::delete),
        )
        .route("/delete_devices", post(devices::delete_many))
        .route("/capabilities", get(discovery::capabilities))
        .route("/keys/upload", post(keys::upload))
        .route("/keys/query", post(keys::query))
        .route("/keys/claim", post(keys::claim))
        .route("/keys/changes", get(keys::changes))
        .route(
            "/keys/device_signing/upload",
            post(keys::device_signing_upload),
        )
        .route("/keys/signatures/upload", post(keys::signatures_upload))
        .route(
            "/sendToDevice/{event_type}/{txn_id}",
            put(keys::send_to_device),
        )
        .route("/sync", get(sync::sync))
        .route("/createRoom", post(rooms::create))
        .route("/join/{room}", post(rooms::join_by_id))
        .route("/joined_rooms", get(rooms::joined_rooms))
        .route("/rooms/{room}/join", post(rooms::join_by_id))
        .route("/rooms/{room}/invite", post(rooms::invite))
        .route("/rooms/{room}/leave", post(rooms::leave))
        .route("/rooms/{room}/kick", post(rooms::kick))
        .route("/rooms/{room}/ban", post(rooms::ban))
        .route("/rooms/{room}/unban", post(rooms::unban))
        .route("/rooms/{room}/send/{event_type}/{txn_id}", put(rooms::send))
        .route("/rooms/{room}/state", get(rooms::all_state))
        // matrix-sdk asks for an empty state key with a trailing slash.
        .route(
            "/rooms/{room}/state/{event_type}",
            get(rooms::get_state_empty_key).put(rooms::put_state_empty_key),
        )
        .route(
            "/rooms/{room}/state/{event_type}/",
            get(rooms::get_state_empty_key).put(rooms::put_state_empty_key),
        )
        .route(
            "/rooms/{room}/state/{event_type}/{state_key}",
            get(rooms::get_state).put(rooms::put_state),
        )
        .route("/rooms/{room}/members", get(rooms::members))
        .route("/rooms/{room}/joined_members", get(rooms::joined_members))
        .route("/rooms/{room}/messages", get(rooms::messages))
        .route("/rooms/{room}/event/{event_id}", get(rooms::event))
        .route(
            "/directory/room/{alias}",
            get(rooms::get_alias)
                .put(rooms::put_alias)
                .delete(rooms::delete_alias),
        )
        .route(
            "/user/{user_id}/account_data/{data_type}",
            get(user_data::get_account_data).put(user_data::put_account_data),
        )
        .route("/user/{user_id}/filter", post(user_data::create_filter))
        .route(
            "/user/{user_id}/filter/{filter_id}",
            get(user_data::get_filter),
        )
        .route("/profile/{user_id}", get(user_data::profile))
        .route(
            "/profile/{user_id}/displayname",
            get(user_data::displayname).put(user_data::set_displayname),
        )
        .route(
            "/profile/{user_id}/avatar_url",
            get(user_data::avatar_url).put(user_data::set_avatar_url),
        );
    Router::new()
        .route("/_matrix/client/versions", get(discovery::versions))
        .route(
            "/.well-known/matrix/client",
            get(discovery::well_known_client),
        )
        .route(
            "/.well-known/matrix/server",
            get(discovery::well_known_server),
        )
        // Older clients and Sytest still use the unstable cross-signing paths.
        .route(
            "/_matrix/client/unstable/keys/device_signing/upload",
            post(keys::device_signing_upload),
        )
        .route(
            "/_matrix/client/unstable/keys/signatures/upload",
            post(keys::signatures_upload),
        )
        .nest("/_matrix/client/v3", versioned.clone())
        .nest("/_matrix/client/r0", versioned)
}
