//! The VM tier is real too: one qemu VM with its own kernel (KVM where the machine has real
//! VT-x/AMD-V, TCG emulation otherwise — the test prints which), reached over SSH, running
//! systemd timers and reaching MinIO through the forwarded address.

use std::time::Duration;

use fleetsnap_tests::{Options, TestEnv, Tier, wait};

#[test]
fn a_vm_boots_its_own_kernel_runs_a_timer_and_reaches_minio() {
    let env = TestEnv::start(Options {
        hosts: 1,
        tier: Tier::Vm,
        kube: false,
        s3: true,
        ..Options::default()
    })
    .unwrap();
    let accel = std::fs::read_to_string(env.dir().join("hosts/host1.accel")).unwrap();
    eprintln!("VM accelerator: {}", accel.trim());

    let facts = env
        .ssh_ok("host1", "systemd-detect-virt; uname -r; hostname")
        .unwrap();
    let mut lines = facts.lines();
    assert_eq!(lines.next(), Some("qemu"), "{facts}");
    let kernel = lines.next().unwrap();
    assert!(
        kernel.contains("cloud-amd64"),
        "guest kernel is the image's own: {kernel}"
    );
    assert_eq!(lines.next(), Some("host1"));

    let timer = "[Timer]\nOnCalendar=*-*-* *:*:00/5\nAccuracySec=1s\n";
    let unit = "[Service]\nType=oneshot\nExecStart=/bin/echo vm-tick\n";
    env.ssh_ok(
        "host1",
        &format!(
            "printf '{unit}' > /etc/systemd/system/vm-tick.service && printf '{timer}' > /etc/systemd/system/vm-tick.timer && systemctl daemon-reload && systemctl start vm-tick.timer"
        ),
    )
    .unwrap();
    wait::until("the VM's timer to fire", Duration::from_secs(180), || {
        let j = env.ssh_ok("host1", "journalctl -u vm-tick.service -o cat --no-pager")?;
        Ok(j.contains("vm-tick").then_some(()))
    })
    .unwrap();

    env.mc(&["mb", "testenv/vm-inbox"]).unwrap();
    env.scp(&env.tool("mc"), "host1", "/usr/local/bin/mc")
        .unwrap();
    let url = format!(
        "http://{}:{}@10.0.2.100:9000\n",
        env.var("MINIO_ROOT_USER"),
        env.var("MINIO_ROOT_PASSWORD")
    );
    let out = env
        .ssh(
            "host1",
            // `mc pipe` reserves a multipart buffer larger than the VM's memory: upload a file.
            "read -r MC_HOST_s3 && export MC_HOST_s3 && uname -r > /tmp/kernel.txt && mc --quiet cp /tmp/kernel.txt s3/vm-inbox/kernel.txt",
            url.as_bytes(),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        env.mc(&["cat", "testenv/vm-inbox/kernel.txt"])
            .unwrap()
            .trim(),
        kernel
    );
}
