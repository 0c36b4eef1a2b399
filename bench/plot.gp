# bench/plot.gp - two bar charts, one above the other: throughput and p99
# latency per server, from the .dat file bench/compare.sh writes
# ("label" rate p99_us, one server per line).
#
#   gnuplot -e "datafile='x.dat'; outfile='x.png'; title='...'; unit='msgs/s'" bench/plot.gp
if (!exists("datafile")) datafile = 'compare.dat'
if (!exists("outfile")) outfile = 'compare.png'
if (!exists("title")) title = 'ioplex bench'
if (!exists("unit")) unit = 'per second'

set terminal pngcairo size 1400,900 font ",10"
set output outfile
set multiplot layout 2,1 title title font ",13"

set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.8
set grid ytics
set key off
set xtics rotate by -40 scale 0 font ",9"
set yrange [0:*]
set offsets 0, 0, graph 0.08, 0   # room above the tallest bar
set format y "%.0f"

set ylabel unit
set title "throughput (median of the repeats; higher is better)"
plot datafile using 2:xticlabels(1) linecolor rgb "#3b75af"

set ylabel "us"
set title "p99 latency (median of the repeats; lower is better)"
plot datafile using 3:xticlabels(1) linecolor rgb "#c44e52"

unset multiplot
