//! Where to connect for a granted port, and a ready command line for it.
//!
//! A port reached through something in front of the VM (an Azure Firewall's DNAT) has
//! its `connection` in the request's status; otherwise the VM's own address from the
//! policy's status: a public one when it has one, else a private one.

use crate::api::ConnectionDetails;
use crate::api::policy::TargetStatus;

/// How the address was learned, which says from where it can be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The request's `connection` (e.g. a firewall's public IP and mapped port).
    Connection,
    /// The VM's public address.
    Public,
    /// The VM's private address: reachable from its network (VPN, peering, bastion).
    Private,
}

/// Where to connect for one granted port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The address.
    pub host: String,
    /// The port to connect to.
    pub port: i32,
    /// Where the address came from.
    pub via: Via,
}

/// Where to connect for `port`, or `None` when the operator has not recorded an address.
pub fn endpoint(
    port: i32,
    connection: Option<&ConnectionDetails>,
    target: Option<&TargetStatus>,
) -> Option<Endpoint> {
    if let Some(c) = connection {
        return Some(Endpoint {
            host: c.address.clone(),
            port: c.port,
            via: Via::Connection,
        });
    }
    let t = target?;
    let (host, via) = match (t.public_ips.first(), t.private_ips.first()) {
        (Some(ip), _) => (ip, Via::Public),
        (None, Some(ip)) => (ip, Via::Private),
        (None, None) => return None,
    };
    Some(Endpoint {
        host: host.clone(),
        port,
        via,
    })
}

/// A command that connects to `e`, given the service's usual port (`requested`): `ssh`
/// for 22, `mstsc /v:` for 3389, PowerShell remoting for WinRM (5985, 5986), else
/// `host:port`.
pub fn hint(requested: i32, e: &Endpoint) -> String {
    let host = if e.host.contains(':') {
        format!("[{}]", e.host)
    } else {
        e.host.clone()
    };
    match requested {
        22 if e.port == 22 => format!("ssh {}", e.host),
        22 => format!("ssh -p {} {}", e.port, e.host),
        3389 if e.port == 3389 => format!("mstsc /v:{host}"),
        3389 => format!("mstsc /v:{host}:{}", e.port),
        5985 if e.port == 5985 => format!("Enter-PSSession -ComputerName {}", e.host),
        5985 => format!("Enter-PSSession -ComputerName {} -Port {}", e.host, e.port),
        5986 if e.port == 5986 => format!("Enter-PSSession -ComputerName {} -UseSSL", e.host),
        5986 => format!(
            "Enter-PSSession -ComputerName {} -Port {} -UseSSL",
            e.host, e.port
        ),
        _ => format!("{host}:{}", e.port),
    }
}

/// A few words on where the address is reachable from.
pub fn note(via: Via) -> &'static str {
    match via {
        Via::Connection => "through the firewall",
        Via::Public => "the VM's public address",
        Via::Private => "the VM's private address: reach it from its network",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(public: &[&str], private: &[&str]) -> TargetStatus {
        TargetStatus {
            name: "web".into(),
            public_ips: public.iter().map(|s| s.to_string()).collect(),
            private_ips: private.iter().map(|s| s.to_string()).collect(),
            ..TargetStatus::default()
        }
    }

    #[test]
    fn connection_then_public_then_private() {
        let both = target(&["198.51.100.4"], &["10.0.1.5"]);
        let fw = ConnectionDetails {
            address: "20.1.2.3".into(),
            port: 50022,
        };
        let e = endpoint(22, Some(&fw), Some(&both)).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.via),
            ("20.1.2.3", 50022, Via::Connection)
        );
        let e = endpoint(22, None, Some(&both)).unwrap();
        assert_eq!((e.host.as_str(), e.via), ("198.51.100.4", Via::Public));
        let e = endpoint(22, None, Some(&target(&[], &["10.0.1.5"]))).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.via),
            ("10.0.1.5", 22, Via::Private)
        );
        assert_eq!(endpoint(22, None, Some(&target(&[], &[]))), None);
        assert_eq!(endpoint(22, None, None), None);
    }

    #[test]
    fn ready_command_lines() {
        let at = |host: &str, port| Endpoint {
            host: host.into(),
            port,
            via: Via::Public,
        };
        assert_eq!(hint(22, &at("10.0.1.5", 22)), "ssh 10.0.1.5");
        assert_eq!(hint(22, &at("20.1.2.3", 50022)), "ssh -p 50022 20.1.2.3");
        assert_eq!(hint(3389, &at("10.0.1.5", 3389)), "mstsc /v:10.0.1.5");
        assert_eq!(
            hint(3389, &at("20.1.2.3", 53389)),
            "mstsc /v:20.1.2.3:53389"
        );
        assert_eq!(
            hint(3389, &at("2001:db8::5", 3389)),
            "mstsc /v:[2001:db8::5]"
        );
        assert_eq!(
            hint(5986, &at("10.0.1.5", 5986)),
            "Enter-PSSession -ComputerName 10.0.1.5 -UseSSL"
        );
        assert_eq!(
            hint(5985, &at("10.0.1.5", 5985)),
            "Enter-PSSession -ComputerName 10.0.1.5"
        );
        assert_eq!(hint(8443, &at("10.0.1.5", 8443)), "10.0.1.5:8443");
    }
}
