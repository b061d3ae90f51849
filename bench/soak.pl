#!/usr/bin/perl
# The sampler and the report of bench/soak.sh (core Perl only).
#
#   soak.pl sample BASE MASTER_PID STORE_DIR INTERVAL OUT PHASE_FILE STOP_FILE
#
# Every INTERVAL seconds until STOP_FILE exists (then once more) or the
# master is gone: appends one JSON line to OUT (and prints a short line):
# the phase (PHASE_FILE's content), the time, each worker's RSS
# (/proc/PID/status: VmRSS, RssAnon, RssFile, RssShmem, kB), data.mdb's
# size, LMDB's pages (`mdb_stat -ef STORE_DIR`: pages used up to the
# highest, free pages, page size), /admin/health's status, and from
# /admin/metrics the counters and gauges below and the histograms' buckets.
#
#   soak.pl report OUT EXECUTIONS RETENTION_S RSS_MB STORE_PCT LOAD_S DRAIN_S
#
# Prints the table of samples (rates and latency percentiles over each
# interval) and the verdict; exits 1 if the verdict fails.

use strict;
use warnings;

use HTTP::Tiny;
use JSON::PP;
use Time::HiRes qw(time sleep);

my %hists = (
    dur    => 'modelroute_execution_duration_seconds{status="COMPLETED"',
    added  => 'modelroute_execution_added_seconds{',
    commit => 'modelroute_store_commit_duration_seconds{',
);

my $cmd = shift // '';
if ($cmd eq 'sample') {
    sample(@ARGV);
} elsif ($cmd eq 'report') {
    exit report(@ARGV);
} else {
    die "usage: $0 sample|report ...\n";
}

# --- sampling ---------------------------------------------------------------

sub slurp {
    my ($f) = @_;
    open(my $fh, '<', $f) or return;
    local $/;
    return scalar <$fh>;
}

sub workers {
    my ($master) = @_;
    my $children = slurp("/proc/$master/task/$master/children") // '';
    my @w;
    for my $pid (sort { $a <=> $b } split ' ', $children) {
        my $st = slurp("/proc/$pid/status") or next;
        my %m = map { $_ => ($st =~ /^$_:\s+(\d+)/m ? $1 + 0 : -1) }
            qw(VmRSS RssAnon RssFile RssShmem);
        my $fds = -1;
        if (opendir(my $d, "/proc/$pid/fd")) {
            $fds = grep { !/^\./ } readdir $d;
            closedir $d;
        }
        push @w, { pid => $pid + 0, rss => $m{VmRSS}, anon => $m{RssAnon},
                   file => $m{RssFile}, shmem => $m{RssShmem}, fds => $fds };
    }
    return \@w;
}

sub metrics {
    my ($text) = @_;
    my (%m, %h);
    for (split /\n/, $text) {
        next if /^#/ || !/\S/;
        my ($name, $value) = /^(\S+)\s+(\S+)$/ or next;
        my $base = $name =~ s/\{.*//r;
        $m{$base} += $value unless $base =~ /_bucket$|_sum$|_count$/;
        $m{$name} = $value + 0 if $name =~ /\{/;
        for my $k (keys %hists) {
            my $p = $hists{$k};
            (my $b = $p) =~ s/\{/_bucket{/;
            next unless index($name, $b) == 0
                && $name =~ /le="([^"]+)"/;
            $h{$k}{$1} = $value + 0;
        }
    }
    return (\%m, \%h);
}

sub sample {
    my ($base, $master, $store, $interval, $out, $phase_file, $stop) = @_;
    my $ua = HTTP::Tiny->new(keep_alive => 1, timeout => 10);
    my $json = JSON::PP->new->canonical;
    my $t0 = time;
    my $last = 0;

    open(my $fh, '>>', $out) or die "$out: $!";
    $fh->autoflush(1);
    $| = 1;

    printf "%7s %-6s %9s %9s %8s %8s %9s %9s %10s  %s\n", 't(s)', 'phase',
        'created', 'finished', 'open', 'backlog', 'stored', 'mdb MB',
        'used MB', 'workers: RSS anon/file MB';

    while (1) {
        my $final = -e $stop || !kill(0, $master);
        my $now = time;
        my %s = (t => sprintf("%.1f", $now - $t0) + 0,
                 phase => (slurp($phase_file) // 'start') =~ s/\s+//gr,
                 workers => workers($master));

        my $r = $ua->get("$base/admin/metrics");
        if ($r->{success}) {
            my ($m, $h) = metrics($r->{content});
            $s{m} = $m;
            $s{h} = $h;
        } else {
            $s{metrics_error} = "$r->{status} $r->{reason}";
        }
        $r = $ua->get("$base/admin/health");
        $s{health} = $r->{status} + 0;
        if ($r->{status} != 200) {
            $s{health_body} = substr($r->{content} // '', 0, 500);
        }

        my @st = stat("$store/data.mdb");
        $s{mdb_bytes} = @st ? $st[7] : -1;
        $s{mdb_alloc} = @st ? $st[12] * 512 : -1;
        if (open(my $ms, '-|', 'mdb_stat', '-ef', $store)) {
            local $/;
            my $o = <$ms>;
            close $ms;
            $s{psize} = $1 + 0 if $o =~ /Page size: (\d+)/;
            $s{pages} = $1 + 0 if $o =~ /Number of pages used: (\d+)/;
            $s{free} = $1 + 0 if $o =~ /Free pages: (\d+)/;
            $s{readers} = $1 + 0 if $o =~ /Number of readers used: (\d+)/;
        }
        print $fh $json->encode(\%s), "\n";

        my $m = $s{m} // {};
        my $fin = 0;
        $fin += $m->{$_} // 0 for grep {
            /^modelroute_executions_finished_total\{/ } keys %$m;
        my $ps = $s{psize} // 4096;
        printf "%7.1f %-6s %9d %9d %8d %8d %9d %9.1f %10.1f  %s%s\n",
            $s{t}, $s{phase},
            $m->{modelroute_executions_created_total} // -1, $fin,
            $m->{modelroute_holds_open} // -1,
            $m->{modelroute_webhook_backlog} // -1,
            $m->{modelroute_executions_stored} // -1,
            $s{mdb_bytes} / 1048576,
            (($s{pages} // 0) - ($s{free} // 0)) * $ps / 1048576,
            join(' ', map { sprintf "%d:%.1f/%.1f", $_->{pid},
                            $_->{anon} / 1024, $_->{file} / 1024 }
                      @{ $s{workers} }),
            ($s{health} == 200 ? '' : "  health $s{health}");

        last if $final;
        my $next = $t0 + (int(($now - $t0) / $interval) + 1) * $interval;
        while (time < $next) {
            last if -e $stop;
            sleep 0.2;
        }
    }
    close $fh;
}

# --- the report ---------------------------------------------------------------

# the q-quantile of the observations between two cumulative bucket sets, as
# Prometheus' histogram_quantile(): linear inside the bucket that holds it
sub quantile {
    my ($q, $from, $to) = @_;
    return undef unless $from && $to;
    my $num = sub { $_[0] eq '+Inf' ? 9**9**9 : $_[0] };
    my @le = sort { $num->($a) <=> $num->($b) } keys %$to;
    return undef unless @le;
    my @d = map { ($to->{$_} // 0) - ($from->{$_} // 0) } @le;
    my $total = $d[-1];
    return undef unless $total > 0;
    my $rank = $q * $total;
    my ($lo, $below) = (0, 0);
    for my $i (0 .. $#le) {
        if ($d[$i] >= $rank) {
            return ">$lo" if $le[$i] eq '+Inf';
            my $in = $d[$i] - $below;
            return $lo + ($le[$i] - $lo) * ($in > 0 ? ($rank - $below) / $in : 1);
        }
        ($lo, $below) = ($le[$i], $d[$i]);
    }
    return undef;
}

sub ms {
    my ($v) = @_;
    return '-' unless defined $v;
    return sprintf(">%g", substr($v, 1) * 1000) if $v =~ /^>/;
    return sprintf($v * 1000 >= 100 ? "%.0f" : "%.1f", $v * 1000);
}

sub report {
    my ($file, $executions, $retention, $rss_mb, $store_pct, $load_s,
        $drain_s) = @_;
    my $json = JSON::PP->new;
    my @s;
    open(my $fh, '<', $file) or die "$file: $!";
    while (<$fh>) {
        push @s, $json->decode($_);
    }
    close $fh;
    my $bad = 0;

    my $get = sub { my ($x, $k) = @_; $x->{m}{$k} // 0 };
    my $fin = sub {
        my ($x, $status) = @_;
        my $n = 0;
        for my $k (keys %{ $x->{m} // {} }) {
            next unless $k =~ /^modelroute_executions_finished_total\{/;
            next if defined $status && $k !~ /status="$status"/;
            $n += $x->{m}{$k};
        }
        return $n;
    };
    my $dlv = sub { $_[0]{m}{"modelroute_webhook_deliveries_total{outcome=\"$_[1]\"}"} // 0 };
    my $used = sub { (($_[0]{pages} // 0) - ($_[0]{free} // 0)) * ($_[0]{psize} // 4096) };
    my $mb = sub { sprintf "%.1f", $_[0] / 1048576 };

    # the table
    my @pids;
    for my $x (@s) {
        for my $w (@{ $x->{workers} }) {
            push @pids, $w->{pid} unless grep { $_ == $w->{pid} } @pids;
        }
    }
    printf "%6s %-5s %8s %6s %6s %7s %7s %8s %7s %7s %7s | %-13s | %-11s | %-11s | %s\n",
        't s', 'phase', 'created', 'new/s', 'done/s', 'open', 'backlog',
        'stored', 'dlv/s', 'mdb MB', 'used MB', 'e2e p50/p99', 'added p50/99',
        'commit 50/99', 'RSS anon/file MB by worker';
    for my $i (0 .. $#s) {
        my ($x, $p) = ($s[$i], $i ? $s[$i - 1] : undef);
        my $dt = $p ? $x->{t} - $p->{t} : 0;
        my $r = sub {
            my ($f) = @_;
            return '-' unless $p && $dt > 0;
            return sprintf "%.0f", ($f->($x) - $f->($p)) / $dt;
        };
        my $pq = sub {
            my ($k) = @_;
            return '-' unless $p;
            return ms(quantile(0.5, $p->{h}{$k}, $x->{h}{$k})) . '/'
                 . ms(quantile(0.99, $p->{h}{$k}, $x->{h}{$k}));
        };
        printf "%6.0f %-5s %8d %6s %6s %7d %7d %8d %7s %7s %7s | %-13s | %-11s | %-11s | %s%s\n",
            $x->{t}, substr($x->{phase}, 0, 5),
            $get->($x, 'modelroute_executions_created_total'),
            $r->(sub { $get->($_[0], 'modelroute_executions_created_total') }),
            $r->(sub { $fin->($_[0]) }),
            $get->($x, 'modelroute_holds_open'),
            $get->($x, 'modelroute_webhook_backlog'),
            $get->($x, 'modelroute_executions_stored'),
            $r->(sub { $dlv->($_[0], 'delivered') }),
            $mb->($x->{mdb_bytes}), $mb->($used->($x)),
            $pq->('dur'), $pq->('added'), $pq->('commit'),
            join(' ', map {
                    my $pid = $_;
                    my ($w) = grep { $_->{pid} == $pid } @{ $x->{workers} };
                    $w ? sprintf("%.1f/%.1f", $w->{anon} / 1024, $w->{file} / 1024)
                       : '-';
                } @pids),
            ($x->{health} == 200 ? '' : " health $x->{health}");
    }
    print "\n";

    # the whole run
    my @load = grep { $_->{phase} eq 'load' } @s;
    my ($first, $last) = ($s[0], $s[-1]);
    my $end = $load[-1] // $last;
    my $created = $get->($last, 'modelroute_executions_created_total');
    my $half = $get->($end, 'modelroute_executions_created_total') / 2;
    my ($mid) = grep { $get->($_, 'modelroute_executions_created_total') >= $half } @load;
    $mid //= $end;

    my %seen_pid;
    for my $x (@s) { $seen_pid{$_->{pid}}++ for @{ $x->{workers} } }
    my $nw = keys %seen_pid;

    my $completed = $fin->($last, 'COMPLETED');
    my $others = $fin->($last) - $completed;
    my $errors = $get->($last, 'modelroute_errors_total');
    my ($dl, $dr, $df) = map { $dlv->($last, $_) } qw(delivered retrying failed);
    my $unhealthy = grep { $_->{health} != 200 } @s;
    my $peak_stored = 0;
    my $peak_used = 0;
    for my $x (@s) {
        my $n = $get->($x, 'modelroute_executions_stored');
        $peak_stored = $n if $n > $peak_stored;
        $peak_used = $used->($x) if $used->($x) > $peak_used;
    }

    printf "bench: executions: %d created (asked %d), %d completed, %d other terminal statuses\n",
        $created, $executions, $completed, $others;
    printf "bench: load %d s (%.0f/s), drain %d s; webhook deliveries: %d delivered, %d retrying, %d failed\n",
        $load_s, $load_s ? $created / $load_s : 0, $drain_s, $dl, $dr, $df;
    printf "bench: executions kept at most %d (%.1f%% of those created); LMDB pages in use at most %s MB\n",
        $peak_stored, $created ? 100 * $peak_stored / $created : 0, $mb->($peak_used);
    printf "bench: latency over the load (created -> COMPLETED p50/p99 ms): %s/%s; added: %s/%s; commit: %s/%s\n",
        map { (ms(quantile(0.5, $first->{h}{$_}, $end->{h}{$_})),
               ms(quantile(0.99, $first->{h}{$_}, $end->{h}{$_}))) } qw(dur added commit);

    if ($errors) {
        print "bench: !!! $errors error answers (modelroute_errors_total) !!!\n";
        $bad = 1;
    }
    if ($others || $completed < $created) {
        print "bench: !!! not every execution completed !!!\n";
        $bad = 1;
    }
    if ($dr || $df) {
        print "bench: !!! webhook deliveries that were not 2xx !!!\n";
        $bad = 1;
    }
    if ($nw != 2) {
        print "bench: !!! $nw worker pids over the run (a worker exited?) !!!\n";
        $bad = 1;
    }
    print "bench: /admin/health was not 200 in $unhealthy samples\n" if $unhealthy;

    # the verdict
    print "\nbench: verdict, over the second half of the load (t = $mid->{t} s, "
        . sprintf("%d created", $get->($mid, 'modelroute_executions_created_total'))
        . " -> t = $end->{t} s, "
        . sprintf("%d created):\n", $get->($end, 'modelroute_executions_created_total'));
    my $n2 = $get->($end, 'modelroute_executions_created_total')
           - $get->($mid, 'modelroute_executions_created_total');
    my $ok = 1;
    if ($mid == $end) {
        print "bench:   too few samples in the load to judge (lower BENCH_SOAK_INTERVAL)\n";
        $ok = 0;
    }
    for my $pid (sort { $a <=> $b } keys %seen_pid) {
        my ($a) = grep { $_->{pid} == $pid } @{ $mid->{workers} };
        my ($b) = grep { $_->{pid} == $pid } @{ $end->{workers} };
        next unless $a && $b;
        my $g = ($b->{anon} - $a->{anon}) / 1024;
        my $pass = $g <= $rss_mb;
        $ok &&= $pass;
        my ($z) = grep { $_->{pid} == $pid } @{ $first->{workers} };
        my ($y) = grep { $_->{pid} == $pid } @{ $last->{workers} };
        printf "bench:   worker %d: RSS anon %.1f -> %.1f MB (%+.1f MB, %+.1f bytes/execution; bound %s MB): %s;"
            . " file-backed %.1f -> %.1f MB, all %.1f -> %.1f MB; open files %s -> %s (%s at the start, %s at the end)\n",
            $pid, $a->{anon} / 1024, $b->{anon} / 1024, $g,
            $n2 ? $g * 1048576 / $n2 : 0, $rss_mb, $pass ? 'flat' : 'GROWS',
            $a->{file} / 1024, $b->{file} / 1024, $a->{rss} / 1024, $b->{rss} / 1024,
            $a->{fds} // '-', $b->{fds} // '-', $z ? $z->{fds} // '-' : '-',
            $y ? $y->{fds} // '-' : '-';
    }

    # an event is purged after the retention, the longest retry step (2 s)
    # and the webhook timeout (5 s): the store is full from then on
    my $judged = $mid->{t} - $first->{t} >= $retention + 17;
    my $g = $end->{mdb_bytes} - $mid->{mdb_bytes};
    my $limit = $mid->{mdb_bytes} * $store_pct / 100;
    my $store_ok = $g <= $limit;
    printf "bench:   data.mdb %s -> %s MB (%+.1f MB; bound +%s%%), pages in use %s -> %s MB,"
        . " executions kept %d -> %d: %s\n",
        $mb->($mid->{mdb_bytes}), $mb->($end->{mdb_bytes}), $g / 1048576,
        $store_pct, $mb->($used->($mid)), $mb->($used->($end)),
        $get->($mid, 'modelroute_executions_stored'),
        $get->($end, 'modelroute_executions_stored'),
        !$judged ? "not judged (the second half began "
                   . sprintf("%.0f s", $mid->{t} - $first->{t})
                   . " into the run, before the retention, ${retention} s, + 17 s)"
                 : $store_ok ? 'bounded' : 'GROWS';
    my $left = $get->($last, 'modelroute_executions_stored');
    printf "bench:   after the retention: %d executions kept, data.mdb %s MB, pages in use %s MB (%s)\n",
        $left, $mb->($last->{mdb_bytes}), $mb->($used->($last)),
        $left == 0 ? 'all purged' : 'NOT all purged';
    $ok &&= ($store_ok || !$judged) && $left == 0;

    print "bench: verdict: " . ($ok ? "PASS" : "FAIL")
        . ($judged ? "" : " (RSS only: the store's growth was not judged)")
        . "\n";
    return ($ok && !$bad) ? 0 : 1;
}
