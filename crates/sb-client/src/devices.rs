//! The device registry.

use crate::{Client, Result};
use reqwest::Method;
use sb_proto::{DeviceInfo, DeviceRegister, DeviceSecret};

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Client {
    /// Registers a device; its id and secret (shown only now).
    pub async fn device_register(&self, req: &DeviceRegister) -> Result<DeviceSecret> {
        self.call(Method::POST, "/v1/devices", Some(req)).await
    }

    pub async fn devices(&self) -> Result<Vec<DeviceInfo>> {
        self.call(Method::GET, "/v1/devices", Self::NO_BODY).await
    }

    /// A device by id or name.
    pub async fn device(&self, key: &str) -> Result<DeviceInfo> {
        self.call(
            Method::GET,
            &format!("/v1/devices/{}", enc(key)),
            Self::NO_BODY,
        )
        .await
    }

    pub async fn device_rotate(&self, key: &str) -> Result<DeviceSecret> {
        self.call(
            Method::POST,
            &format!("/v1/devices/{}/rotate", enc(key)),
            Self::NO_BODY,
        )
        .await
    }

    pub async fn device_revoke(&self, key: &str) -> Result<DeviceInfo> {
        self.call(
            Method::DELETE,
            &format!("/v1/devices/{}", enc(key)),
            Self::NO_BODY,
        )
        .await
    }
}
