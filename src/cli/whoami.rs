//! Who the API server takes the caller to be, for `ls` to show the caller's requests.
//!
//! Kubernetes 1.28+ answers a SelfSubjectReview (`authentication.k8s.io/v1`; v1beta1 from
//! 1.27, v1alpha1 from 1.26 behind a gate). Older servers do not serve it, and no default
//! role grants it there, so the RBAC authorizer refuses the call before routing it, and
//! names the user in the refusal (`User "alice" cannot create resource …`): that is the
//! answer on those servers. Users allowed everything (cluster admins) get a 404 instead;
//! then the name stays unknown.

use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

/// How the user name was learned, or why it was not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The API server's answer.
    Known(String),
    /// Nothing answered; the reason, for the user.
    Unknown(String),
}

/// Asks the API server who the caller is.
pub async fn whoami(client: &kube::Client) -> Identity {
    for version in ["v1", "v1beta1", "v1alpha1"] {
        match self_subject_review(client, version).await {
            Ok(Some(name)) => return Identity::Known(name),
            Ok(None) => continue,
            Err(e) => return Identity::Unknown(format!("SelfSubjectReview failed: {e}")),
        }
    }
    Identity::Unknown(
        "this API server has no SelfSubjectReview (Kubernetes < 1.26) and lets you do anything, so no refusal names you"
            .into(),
    )
}

/// `Ok(None)` when the server does not serve this version.
async fn self_subject_review(
    client: &kube::Client,
    version: &str,
) -> Result<Option<String>, String> {
    let gvk = GroupVersionKind::gvk("authentication.k8s.io", version, "SelfSubjectReview");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "selfsubjectreviews");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let review = DynamicObject::new("", &resource);
    match api.create(&PostParams::default(), &review).await {
        Ok(r) => Ok(r
            .data
            .pointer("/status/userInfo/username")
            .and_then(|v| v.as_str())
            .map(str::to_string)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 403 => match user_in_refusal(&s.message) {
            Some(name) => Ok(Some(name)),
            None => Ok(None),
        },
        Err(e) => Err(super::kube_message(&e)),
    }
}

/// The user an RBAC refusal names: `… User "alice" cannot get path "/x"`.
pub fn user_in_refusal(message: &str) -> Option<String> {
    let rest = message.split_once("User \"")?.1;
    let (name, _) = rest.split_once("\" cannot ")?;
    (!name.is_empty()).then(|| name.replace("\\\"", "\"").replace("\\\\", "\\"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_is_read_from_a_refusal() {
        assert_eq!(
            user_in_refusal(
                "selfsubjectreviews.authentication.k8s.io is forbidden: User \"alice\" cannot create resource \"selfsubjectreviews\" in API group \"authentication.k8s.io\" at the cluster scope"
            ),
            Some("alice".into())
        );
        assert_eq!(
            user_in_refusal(
                "forbidden: User \"system:serviceaccount:ci:deployer\" cannot get path \"/x\""
            ),
            Some("system:serviceaccount:ci:deployer".into())
        );
        assert_eq!(
            user_in_refusal("the server could not find the requested resource"),
            None
        );
    }
}
