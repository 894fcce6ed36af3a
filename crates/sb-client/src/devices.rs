//! The device registry.

use crate::{Client, Result};
use reqwest::Method;
use sb_proto::{
    CommandCreate, CommandInfo, DeviceInfo, DeviceRegister, DeviceSecret, TwinInfo, TwinPatch,
};

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

    /// A client certificate and key for a device (shown once; the earlier one stops working).
    pub async fn device_certificate(&self, key: &str) -> Result<sb_proto::DeviceCertificate> {
        self.call(
            Method::POST,
            &format!("/v1/devices/{}/certificate", enc(key)),
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

    /// Sends a command to a device.
    pub async fn device_call(&self, key: &str, req: &CommandCreate) -> Result<CommandInfo> {
        self.call(
            Method::POST,
            &format!("/v1/devices/{}/commands", enc(key)),
            Some(req),
        )
        .await
    }

    /// A command; with `wait_secs`, once it has finished or after that long.
    pub async fn device_command(
        &self,
        key: &str,
        id: &str,
        wait_secs: Option<u64>,
    ) -> Result<CommandInfo> {
        let wait = wait_secs
            .map(|s| format!("?wait_secs={s}"))
            .unwrap_or_default();
        self.call(
            Method::GET,
            &format!("/v1/devices/{}/commands/{}{wait}", enc(key), enc(id)),
            Self::NO_BODY,
        )
        .await
    }

    pub async fn device_twin(&self, key: &str) -> Result<TwinInfo> {
        self.call(
            Method::GET,
            &format!("/v1/devices/{}/twin", enc(key)),
            Self::NO_BODY,
        )
        .await
    }

    /// Changes a twin's desired state (a merge patch), if still at `patch.version`.
    pub async fn device_configure(&self, key: &str, patch: &TwinPatch) -> Result<TwinInfo> {
        self.call(
            Method::PATCH,
            &format!("/v1/devices/{}/twin", enc(key)),
            Some(patch),
        )
        .await
    }

    /// Uploads a firmware image with its signature (see `sb_devices::firmware::sign`).
    pub async fn firmware_upload(
        &self,
        version: &str,
        image: Vec<u8>,
        signature: &str,
        public_key: &str,
    ) -> Result<sb_proto::FirmwareInfo> {
        let resp = self
            .raw_with_headers(
                Method::POST,
                &format!("/v1/firmware?version={}", enc(version)),
                &[
                    ("content-type", "application/octet-stream"),
                    ("x-firmware-signature", signature),
                    ("x-firmware-public-key", public_key),
                ],
                image,
            )
            .await?;
        Self::decode(resp).await
    }

    pub async fn firmwares(&self) -> Result<Vec<sb_proto::FirmwareInfo>> {
        self.call(Method::GET, "/v1/firmware", Self::NO_BODY).await
    }

    /// Downloads a firmware image as a device would: HTTP Basic `id:secret`, and after a
    /// broken transfer it asks for the rest with Range, up to `attempts` times. `path` is the
    /// image's (`/v1/firmware/<v>/image`, as a rollout announces it).
    pub async fn firmware_download_as_device(
        &self,
        path: &str,
        id: &str,
        secret: &str,
        attempts: usize,
    ) -> Result<Vec<u8>> {
        use base64::Engine;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        );
        let mut image = Vec::new();
        let mut last = None;
        for _ in 0..attempts.max(1) {
            let range = format!("bytes={}-", image.len());
            let mut headers = vec![("authorization", basic.as_str())];
            if !image.is_empty() {
                headers.push(("range", range.as_str()));
            }
            let mut resp = match self
                .raw_with_headers(Method::GET, path, &headers, Vec::new())
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match resp.status().as_u16() {
                200 => image.clear(),
                206 => {}
                // Asked from the end: it was all here.
                416 if !image.is_empty() => return Ok(image),
                _ => {
                    return Err(Self::decode::<serde_json::Value>(resp)
                        .await
                        .err()
                        .unwrap_or(crate::ClientError::Protocol(
                            "an unexpected answer to a download".into(),
                        )));
                }
            }
            loop {
                match resp.chunk().await {
                    Ok(Some(bytes)) => image.extend_from_slice(&bytes),
                    Ok(None) => return Ok(image),
                    Err(e) => {
                        last = Some(self.transport_error(e));
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| crate::ClientError::Protocol("no attempt was made".into())))
    }

    pub async fn rollout_create(
        &self,
        req: &sb_proto::RolloutCreate,
    ) -> Result<sb_proto::RolloutInfo> {
        self.call(Method::POST, "/v1/rollouts", Some(req)).await
    }

    /// Every rollout, newest first (without device lists).
    pub async fn rollouts(&self) -> Result<Vec<sb_proto::RolloutInfo>> {
        self.call(Method::GET, "/v1/rollouts", Self::NO_BODY).await
    }

    pub async fn rollout(&self, id: &str) -> Result<sb_proto::RolloutInfo> {
        self.call(
            Method::GET,
            &format!("/v1/rollouts/{}", enc(id)),
            Self::NO_BODY,
        )
        .await
    }

    /// Lets a halted rollout go on, with a new failure budget (`3` or `10%`) if given.
    pub async fn rollout_resume(
        &self,
        id: &str,
        max_failures: Option<&str>,
    ) -> Result<sb_proto::RolloutInfo> {
        let q = max_failures
            .map(|m| format!("?max_failures={}", enc(m)))
            .unwrap_or_default();
        self.call(
            Method::POST,
            &format!("/v1/rollouts/{}/resume{q}", enc(id)),
            Self::NO_BODY,
        )
        .await
    }

    pub async fn rollout_cancel(&self, id: &str) -> Result<sb_proto::RolloutInfo> {
        self.call(
            Method::POST,
            &format!("/v1/rollouts/{}/cancel", enc(id)),
            Self::NO_BODY,
        )
        .await
    }
}
